"""Tagging served without torch: the predictor, the ``/v1`` request and the v2 tensors."""

import numpy as np
from pydantic import BaseModel, Field

from deploy import signatures as names
from deploy.open_inference import Output, Tensors, joined_values_of
from deploy.runtime import Predictor, sub_batches
from deploy.serving import TaskAPI
from zoo.common import text

# Padded cells (sentences x words x characters per word) per onnxruntime call.
CHARACTERS = 32_768


class TaggerPredictor(Predictor):
    needs_labels = True

    def tag(self, sentences: list[str] | list[list[str]], budget: int = CHARACTERS) -> list[dict]:
        """``[{"words", "tags"}]`` per sentence (``zoo.common.predict.tagging.Tagging``); a sentence is a string
        (split on whitespace) or its words."""
        return self.predict(sentences, budget=budget)

    def tag_ids(self, sentences: list[list[str]], budget: int = CHARACTERS) -> list[list[int]]:
        """Each sentence's tag ids, in calls that pad at most ``budget`` cells (sentences x words, x
        characters per word if the model reads them); a sentence over it runs alone."""
        chars = "char_tokenizer" in self.tokenizers
        sizes = [(len(w), min(max(map(len, w)), text.MAX_WORD_CHARACTERS) if chars else 1) for w in sentences]
        results = [None] * len(sentences)
        for rows in sub_batches(sizes, budget):
            words, feed = self.features([sentences[i] for i in rows])
            tags = self.sessions["model.onnx"].run([names.TAGS], feed)[0]
            for row, i in enumerate(rows):
                results[i] = tags[row, : len(words[row])].tolist()
        return results

    def features(self, sentences: list[str] | list[list[str]]) -> tuple[list[list[str]], dict[str, np.ndarray]]:
        """The sentences' words and the graph's inputs: padded word ids, lengths (and characters)."""
        sentences = text.split_words(sentences)
        word_tokenizer = self.tokenizers["tokenizer"]
        encoded = text.encode_words(word_tokenizer, self.tokenizers.get("char_tokenizer"), sentences)
        tokens, lengths = text.pad([ids for ids, _ in encoded], text.pad_id(word_tokenizer))
        feed = {names.TOKENS: tokens, names.LENGTHS: lengths}
        if "char_tokenizer" in self.tokenizers:
            chars = text.pad_words([chars for _, chars in encoded], tokens.shape[1])
            feed[names.CHARS], feed[names.CHAR_LENGTHS] = chars
        return sentences, feed


class TagRequest(BaseModel):
    sentences: list[str] = Field(min_length=1, description="sentences; words are split on whitespace")


API = TaskAPI(TagRequest, "sentences")
TENSORS = Tensors("text", "BYTES", {"tags": Output("BYTES", joined_values_of("tags"))})
