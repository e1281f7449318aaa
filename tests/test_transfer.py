"""Transfer learning: a language model's encoder or an embedding file as a classifier's or tagger's
first weights, and layer-wise fine-tuning (discriminative learning rates, gradual unfreezing)."""

from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer

from lightning_modules import ClassificationTask, LanguageModelTask, TaggingTask
from lightning_modules.transfer import GradualUnfreezing, Transfer, TransferError, layer_groups, load_encoder
from tests.conftest import REPO, rnnzoo
from tests.test_classification import synthetic_reviews
from tests.test_distillation import teacher_folder

WORDS = ["<unk>", "<eos>"] + [f"w{i}" for i in range(18)]


def word_tokenizer() -> str:
    from datamodules.tokenization import fit_word_tokenizer

    return fit_word_tokenizer([" ".join(WORDS[2:])], special_tokens=WORDS[:2]).to_str()


def language_model(folder, embedding_dim=8, hidden_size=8, num_layers=1, tokenizer=None) -> str:
    """An (untrained: any weights do) language model saved as a pretrained folder."""
    torch.manual_seed(1)
    lm = LanguageModelTask(len(WORDS), embedding_dim=embedding_dim, hidden_size=hidden_size, num_layers=num_layers)
    tokenizers = {"tokenizer": tokenizer or word_tokenizer()}
    return teacher_folder(lm, None, folder, tokenizers)


def classifier(**architecture) -> ClassificationTask:
    torch.manual_seed(2)
    task = ClassificationTask(len(WORDS), ["neg", "pos"], **({"embedding_dim": 8, "hidden_size": 8} | architecture))
    task.tokenizer_jsons = {"tokenizer": word_tokenizer()}
    return task


def lm_state(folder) -> dict[str, torch.Tensor]:
    from zoo.storage.pretrained import load_pretrained

    return load_pretrained(folder).network.state_dict()


def test_the_encoder_tensors_are_copied_exactly_and_the_rest_is_left_alone(tmp_path):
    source = language_model(tmp_path / "lm", num_layers=2)
    task = classifier(num_layers=2, bidirectional=False)
    before = {name: tensor.clone() for name, tensor in task.net.state_dict().items()}
    line = load_encoder(task, source)
    after, lm = task.net.state_dict(), lm_state(source)
    copied = [name for name in lm if name.startswith(("embedding.", "rnn."))]
    assert len(copied) == 9  # the embedding and 4 tensors per LSTM layer
    for name in copied:
        torch.testing.assert_close(after[name], lm[name], rtol=0, atol=0)
    for name in set(after) - set(copied):
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    assert "9 tensors" in line and "fresh: classifier.weight, classifier.bias" in line


def test_a_one_direction_layer_fills_the_forward_direction_of_a_bidirectional_one(tmp_path):
    source = language_model(tmp_path / "lm")
    task = classifier(num_layers=1, bidirectional=True)
    backward = {n: t.clone() for n, t in task.net.state_dict().items() if ".directions.1." in n}
    load_encoder(task, source)
    after, lm = task.net.state_dict(), lm_state(source)
    torch.testing.assert_close(after["rnn.layers.0.directions.0.weight_hh_l0"], lm["rnn.layers.0.weight_hh_l0"])
    for name, tensor in backward.items():
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("lm", "model", "message"),
    [
        ({"hidden_size": 16}, {}, r"rnn.layers.0.weight_ih_l0 is \(64, 8\), this model.s .* is \(32, 8\)"),
        ({"embedding_dim": 4}, {}, r"embedding.weight is \(20, 4\), this model's embedding.weight is \(20, 8\)"),
        ({"num_layers": 2}, {"num_layers": 1}, "rnn.layers.1.weight_ih_l0 .* has no place in this model"),
        ({"num_layers": 2}, {"num_layers": 2}, r"rnn.layers.1.weight_ih_l0 is \(32, 8\), this model's .* \(32, 16\)"),
    ],
)
def test_sizes_that_differ_are_refused_naming_both(tmp_path, lm, model, message):
    source = language_model(tmp_path / "lm", **lm)
    with pytest.raises(TransferError, match=message):
        load_encoder(classifier(**model), source)


def test_a_tagger_with_character_features_takes_the_input_weights_in_its_word_columns(tmp_path):
    source = language_model(tmp_path / "lm")
    for char_encoder in ("lstm", "cnn"):
        torch.manual_seed(3)
        architecture = {"embedding_dim": 8, "hidden_size": 8, "num_layers": 2, "char_encoder": char_encoder}
        tagger = TaggingTask(len(WORDS), ["O", "B-X", "I-X"], char_vocab_size=5, **architecture)
        tagger.tokenizer_jsons = {"tokenizer": word_tokenizer()}
        before = {name: tensor.clone() for name, tensor in tagger.net.state_dict().items()}
        line = load_encoder(tagger, source)
        after, lm = tagger.net.state_dict(), lm_state(source)
        first = after["rnn.layers.0.directions.0.weight_ih_l0"]
        torch.testing.assert_close(first[:, :8], lm["rnn.layers.0.weight_ih_l0"], rtol=0, atol=0)
        torch.testing.assert_close(first[:, 8:], before["rnn.layers.0.directions.0.weight_ih_l0"][:, 8:])
        torch.testing.assert_close(after["embedding.weight"], lm["embedding.weight"], rtol=0, atol=0)
        for name in [n for n in after if n.startswith(("chars.", "rnn.layers.1.")) or "directions.1" in n]:
            torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
        assert "(the word columns of rnn.layers.0.directions.0.weight_ih_l0)" in line


def test_another_vocabulary_or_task_is_refused(tmp_path):
    other = Tokenizer.from_str(word_tokenizer())
    other.add_tokens(["extra"])
    with pytest.raises(TransferError, match=r"another tokenizer vocabulary \(21 tokens, not 20\).*tokenizer_from"):
        load_encoder(classifier(), language_model(tmp_path / "lm2", tokenizer=other.to_str()))

    task = classifier()
    not_lm = teacher_folder(task, None, tmp_path / "clf", task.tokenizer_jsons)
    with pytest.raises(TransferError, match="holds a classification model, not a language_model one"):
        load_encoder(classifier(), str(not_lm))


def test_transfer_options_are_checked():
    with pytest.raises(ValueError, match="encoder_from already sets the word embedding"):
        Transfer("lm", "vectors.txt")
    with pytest.raises(ValueError, match="freeze_embeddings keeps pretrained vectors fixed"):
        ClassificationTask(10, ["a", "b"], freeze_embeddings=True, embedding_dim=4, hidden_size=4)
    with pytest.raises(ValueError, match="lr_decay must be >= 1"):
        GradualUnfreezing(lr_decay=0.5)


def test_embedding_file_rows_land_on_their_tokens_and_can_stay_frozen(tmp_path, caplog):
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("w3 1 2 3 4 5 6 7 8\nw5 8 7 6 5 4 3 2 1\nnot-in-vocabulary 0 0 0 0 0 0 0 0\n")
    task = classifier()
    untouched = task.net.embedding.weight[6].clone()
    Transfer(pretrained_embeddings=str(vectors), freeze_embeddings=True).attach(task)
    vocabulary = Tokenizer.from_str(word_tokenizer()).get_vocab()
    weight = task.net.embedding.weight
    torch.testing.assert_close(weight[vocabulary["w3"]], torch.arange(1.0, 9.0))
    torch.testing.assert_close(weight[vocabulary["w5"]], torch.arange(8.0, 0.0, -1.0))
    torch.testing.assert_close(weight[6], untouched)
    assert not weight.requires_grad

    wrong = tmp_path / "wrong.txt"
    wrong.write_text("w3 1 2 3\n")
    with pytest.raises(TransferError, match="3-dimensional .* embedding_dim is 8"):
        Transfer(pretrained_embeddings=str(wrong)).attach(classifier())


# ---- layer-wise fine-tuning ----------------------------------------------------------------------------


def fine_tuning(task, scheduler, lr_decay=2.0, unfreeze_every=1):
    """``GradualUnfreezing`` started on ``task`` with an Adam optimizer and ``scheduler(optimizer)``, as a
    Trainer would; returns the callback, optimizer and scheduler."""
    optimizer = torch.optim.Adam(task.parameters(), lr=0.01)
    schedule = scheduler(optimizer)
    trainer = SimpleNamespace(
        optimizers=[optimizer], lr_scheduler_configs=[SimpleNamespace(scheduler=schedule)], current_epoch=0
    )
    callback = GradualUnfreezing(lr_decay=lr_decay, unfreeze_every=unfreeze_every)
    callback.on_fit_start(trainer, task)
    return callback, optimizer, schedule


def test_each_layer_group_gets_its_learning_rate_and_unfreezes_on_its_epoch():
    task = classifier(num_layers=2, bidirectional=False)
    task.net.embedding.weight.requires_grad_(False)  # frozen by the user: stays frozen
    callback, optimizer, _ = fine_tuning(task, lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5))
    groups = layer_groups(task.net)
    assert [len(g["params"]) for g in optimizer.param_groups] == [len(group) for group in groups] == [2, 4, 4, 1]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])

    def trainable():
        return [any(p.requires_grad for p in group) for group in groups]

    assert trainable() == [True, False, False, False]  # epoch 0: the head alone
    for epoch, expected in ((1, [True, True, False, False]), (2, [True, True, True, False]), (5, [True] * 3 + [False])):
        callback.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), task)
        assert trainable() == expected

    callback, optimizer, schedule = fine_tuning(
        classifier(), lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5), unfreeze_every=0
    )
    assert all(p.requires_grad for p in callback.groups[-1])
    optimizer.step()
    schedule.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.005, 0.0025, 0.00125])


@pytest.mark.parametrize(
    "scheduler",
    [
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1 / (1 + step)),
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.1),
    ],
)
def test_schedules_scale_every_group_alike(scheduler):
    _, optimizer, schedule = fine_tuning(classifier(), scheduler, lr_decay=4.0, unfreeze_every=0)
    for _ in range(3):
        optimizer.step()
        schedule.step(1.0) if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau) else schedule.step()
    rates = [g["lr"] for g in optimizer.param_groups]
    assert rates[0] != 0.01 and rates == pytest.approx([rates[0], rates[0] / 4, rates[0] / 16])


def test_fit_from_a_language_model_checkpoint_with_the_cli(tmp_path):
    """``encoder_from`` a ``.ckpt``: the data takes its tokenizer, the encoder is copied and, frozen by
    gradual unfreezing for the first epoch, is still the language model's after it; a one-cycle
    schedule steps per batch in every layer group."""
    import shutil

    import lightning as L

    from datamodules import PTBDataModule

    reviews = synthetic_reviews(tmp_path / "reviews", n=40)
    corpus = tmp_path / "corpus"  # the review texts as a language model's corpus
    corpus.mkdir()
    for split in ("train", "validation", "test"):
        shutil.copy(reviews / "train.parquet", corpus / f"{split}.parquet")
    data = PTBDataModule(data_dir=str(corpus), text_column="text", bptt=5)
    torch.manual_seed(0)
    lm = LanguageModelTask(data.vocab_size, embedding_dim=8, hidden_size=8, num_layers=1)
    lm.configure_optimizers = lambda: torch.optim.SGD(lm.parameters(), lr=0.1)
    trainer = L.Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(lm, datamodule=data)
    ckpt = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(ckpt)

    config = str(REPO / "zoo" / "configs" / "imdb_bilstm.yaml")
    arguments = (
        f"--data.data_dir {reviews} --data.val_size 10 --data.batch_size 8 --model.init_args.embedding_dim 8 "
        f"--model.init_args.hidden_size 8 --model.init_args.encoder_from {ckpt} --trainer.max_epochs 1 "
        "--trainer.enable_progress_bar false --trainer.callbacks+=lightning_modules.transfer.GradualUnfreezing "
        "--trainer.callbacks.lr_decay 2.6 --lr_scheduler torch.optim.lr_scheduler.OneCycleLR "
        "--lr_scheduler.max_lr 0.01 --lr_scheduler.total_steps 5"
    ).split()
    fitted = rnnzoo(tmp_path, "fit", "--config", config, *arguments)
    assert "encoder from" in fitted.stdout + fitted.stderr
    checkpoint = torch.load(tmp_path / "checkpoints" / "imdb_bilstm" / "last.ckpt", weights_only=False)
    tokenizer = Tokenizer.from_str(checkpoint["tokenizer"])
    assert tokenizer.get_vocab() == data.tokenizer.get_vocab() and tokenizer.truncation["max_length"] == 400
    weights = checkpoint["state_dict"]
    for name, tensor in lm.net.state_dict().items():
        if name.startswith("rnn."):
            name = name.replace("layers.0.", "layers.0.directions.0.")
        if name.startswith(("embedding.", "rnn.")):
            torch.testing.assert_close(weights[f"net.{name}"], tensor, rtol=0, atol=0)
    rates = [group["lr"] for group in checkpoint["optimizer_states"][0]["param_groups"]]
    assert len(rates) == 3 and rates == pytest.approx([rates[0], rates[0] / 2.6, rates[0] / 2.6**2])
    assert checkpoint["global_step"] == 4 and rates[0] == pytest.approx(one_cycle_lr(after_steps=4))


def one_cycle_lr(after_steps: int) -> float:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=5)
    for _ in range(after_steps):
        optimizer.step()
        schedule.step()
    return optimizer.param_groups[0]["lr"]
