"""Sequence-level distillation data (Kim & Rush 2016): a translation data folder whose training
targets are a teacher's beam translations, written once as Parquet (``rnnzoo distill-data``); a
student trained on it learns the teacher's output distribution's mode, not the references' noise."""

import os
import shutil
from pathlib import Path

from datasets import Dataset

from lightning_modules.task_io import load_task
from lightning_modules.translation import TranslationTask
from zoo.storage.pretrained import check_replaceable, staged_folder


def sequence_level_data(
    teacher: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    source_lang: str = "de",
    target_lang: str = "en",
    translation_column: str | None = None,
    beam_size: int = 5,
    batch_size: int = 64,
) -> Path:
    """A copy of a translation data folder (``train``/``validation``/``test.parquet``) whose training
    targets are the ``teacher``'s beam translations of their sources (sequence-level distillation,
    Kim & Rush 2016). Validation and test are copied unchanged: the student is still selected and
    scored against the human references. The columns are the datamodule's (``source_lang``,
    ``target_lang``, ``translation_column``); ``out_dir`` appears whole or not at all."""
    check_replaceable(Path(out_dir).absolute())  # before the translating, which takes a while
    folder = Path(data_dir)
    missing = [
        f"{split}.parquet" for split in ("train", "validation", "test") if not (folder / f"{split}.parquet").is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{folder} has no {', '.join(missing)}")
    task = load_task(teacher, TranslationTask)
    train = Dataset.from_parquet(str(folder / "train.parquet"))
    column = translation_column or target_lang
    if column not in train.column_names or (translation_column is None and source_lang not in train.column_names):
        raise ValueError(f"{folder / 'train.parquet'} has the columns {train.column_names}: set the languages' columns")

    def translate(batch: dict) -> dict:
        if translation_column is None:
            return {target_lang: task.translate(batch[source_lang], beam_size)}
        pairs = batch[translation_column]
        translations = task.translate([pair[source_lang] for pair in pairs], beam_size)
        return {translation_column: [{**pair, target_lang: t} for pair, t in zip(pairs, translations, strict=True)]}

    distilled = train.map(translate, batched=True, batch_size=batch_size, desc="teacher translations")
    with staged_folder(out_dir) as staging:
        distilled.to_parquet(str(staging / "train.parquet"))
        for split in ("validation", "test"):
            shutil.copyfile(folder / f"{split}.parquet", staging / f"{split}.parquet")
    return Path(out_dir)
