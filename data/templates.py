"""Prompt templates shared by evaluation and finetuning, so a model is scored on the layout it was tuned on.

Classification is scored as the template followed by a label word (a verbalizer), and finetuned the same way:
the paper's "it is [label]" pattern, with the label word after ``Answer:``. Question answering reads
``Question: ... Answer:`` after the image, as the paper's VQA finetuning does; captioning is the image alone,
which is how pretraining lays out image-caption pairs. Every template's text is printed by the scripts and stored
in their results JSON.

Content-free inputs for contextual calibration (Zhao et al. 2021) are the same template with every text field
set to "N/A", "" or "[MASK]" and every image replaced by a mid-grey one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment
from PIL import Image

from data.prompts import ImageSeg, Prompt, Segment, SpecialSeg, through_encoder

CONTENT_FREE = ("N/A", "", "[MASK]")
QA_TEMPLATE = "Question: {question} Answer:"


@dataclass(frozen=True)
class ClassTemplate:
    """``text`` is formatted with the example's text fields; ``labels`` maps each dataset label to its word."""

    text: str
    labels: Mapping[str, str]
    images: int = 0

    @property
    def label_set(self) -> tuple[str, ...]:
        return tuple(self.labels)

    @property
    def verbalizers(self) -> list[str]:
        return [" " + w for w in self.labels.values()]

    def describe(self) -> str:
        image = "<image> " * self.images
        words = ", ".join(f"{k} -> {w!r}" for k, w in self.labels.items())
        return f"{image}{self.text}\n[label word]: {words}"

    def prompt(self, texts: Mapping[str, str], images: Sequence[str | Path | Image.Image] = ()) -> list[Segment]:
        if len(images) != self.images:
            raise ValueError(f"this template takes {self.images} image(s); the example has {len(images)}")
        try:
            body = self.text.format(**texts)
        except KeyError as err:
            raise ValueError(f"the template needs the text field {err}; the example has {sorted(texts)}") from err
        return [*(ImageSeg(i) for i in images), body]

    def content_free(self, texts: Mapping[str, str]) -> list[Prompt]:
        grey = Image.new("RGB", (32, 32), (128, 128, 128))
        return [self.prompt({k: cf for k in texts}, [grey] * self.images) for cf in CONTENT_FREE]

    def index(self, label: str, where: str) -> int:
        """Position of ``label`` among the verbalizers; a label outside the set names ``where`` it came from."""
        if label not in self.labels:
            raise ValueError(f"{where}: label {label!r} is not one of {list(self.labels)}")
        return list(self.labels).index(label)


TF = {"entailment": "True", "not_entailment": "False"}
NLI = {"entailment": "True", "neutral": "Neither", "contradiction": "False"}
# Text templates follow the GPT-3 paper / lm-evaluation-harness wording where one exists.
CLASSIFICATION: dict[str, ClassTemplate] = {
    "sst2": ClassTemplate(
        "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:", {"0": "negative", "1": "positive"}
    ),
    "rte": ClassTemplate("{premise}\nQuestion: {hypothesis} True or False?\nAnswer:", TF),
    "mnli": ClassTemplate("{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:", NLI),
    "qnli": ClassTemplate(
        "{question}\n{sentence}\nQuestion: Does this response answer the question?\nAnswer:",
        {"entailment": "yes", "not_entailment": "no"},
    ),
    "mrpc": ClassTemplate(
        "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Do both sentences mean the same thing?\nAnswer:",
        {"0": "no", "1": "yes"},
    ),
    "qqp": ClassTemplate(
        "Question 1: {question1}\nQuestion 2: {question2}\nQuestion: Do both questions ask the same thing?\nAnswer:",
        {"0": "no", "1": "yes"},
    ),
    "cola": ClassTemplate("{sentence}\nQuestion: Does this sentence make sense?\nAnswer:", {"0": "no", "1": "yes"}),
    "snli-ve": ClassTemplate("Question: {hypothesis} True, False or Neither?\nAnswer:", NLI, images=1),
    "nlvr2": ClassTemplate(
        "Question: {sentence} True or False?\nAnswer:", {"True": "True", "False": "False"}, images=2
    ),
}
CLASSIFICATION["wnli"] = ClassTemplate(CLASSIFICATION["rte"].text, {"0": "False", "1": "True"})
for _alias, _same in (("world-entail", "rte"), ("mnli-mm", "mnli")):
    CLASSIFICATION[_alias] = CLASSIFICATION[_same]


def qa_prompt(question: str, image: str | Path | Image.Image | None = None) -> list[Segment]:
    """``<image> Question: {question} Answer:`` (no image for text-only QA)."""
    text = QA_TEMPLATE.format(question=question.strip())
    return [ImageSeg(image), text] if image is not None else [text]


def caption_prompt(image: str | Path | Image.Image) -> list[Segment]:
    """The image alone: the decoder continues with its caption, as in pretraining."""
    return [ImageSeg(image)]


# Conversations (instruction tuning and the demos): each user turn may carry images; the model writes after
# "Assistant:" and its turn ends with a newline (or </s>). With ``encode_user`` the user's words go through the
# bidirectional text encoder, as MetaLM reads an instruction; the assistant's words are always causal.
USER, ASSISTANT = "User:", "Assistant:"
CHAT_STOP = ("\nUser:", "\n")


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    text: str
    images: Sequence[str | Path | Image.Image] = ()


def chat_prompt(turns: Sequence[Turn], encode_user: bool = False) -> list[Segment]:
    """``[images] User: {text}\\nAssistant: {answer}\\n ...``, ending with ``Assistant:`` after a user turn so the
    model continues with its answer."""
    out: list[Segment] = []
    for turn in turns:
        if turn.role == "user":
            user: list[Segment] = [f"{USER} {turn.text.strip()}\n"]
            out += [ImageSeg(i) for i in turn.images]
            out += through_encoder(user) if encode_user else user
            out.append(ASSISTANT)
        elif turn.role == "assistant":
            if turn.images:
                raise ValueError("an assistant turn cannot carry images")
            out.append(f" {turn.text.strip()}\n")
        else:
            raise ValueError(f"turn role {turn.role!r}: expected 'user' or 'assistant'")
    return out


# FLAN-style instruction templates: each training example is rendered by one chosen at random, so the model learns
# the task rather than one phrasing; evaluation uses the first.
INSTRUCTION_TEMPLATES = (
    "{instruction}\n{input}",
    "Instruction: {instruction}\nInput: {input}",
    "{input}\n\n{instruction}",
    "Read the task and answer it. {instruction} {input}",
    "Task: {instruction}\n{input}\nGive only the answer.",
)


OPTIONS = "Options:"


def instruction_text(instruction: str, input: str = "", template: int = 0, options: Sequence[str] = ()) -> str:
    """The user's words for an (instruction, input) pair under template number ``template``; an empty input
    leaves the instruction alone. A closed-set task's ``options`` follow on their own line, as FLAN lists them."""
    instruction, input = instruction.strip(), input.strip()
    if not instruction:
        raise ValueError("an instruction is empty; expected the task in words")
    text = instruction
    if input:
        text = INSTRUCTION_TEMPLATES[template % len(INSTRUCTION_TEMPLATES)].format(instruction=instruction, input=input)
    return f"{text}\n{OPTIONS} {', '.join(options)}" if options else text


def instruction_prompt(example, template: int = 0, encode_user: bool = False) -> list[Segment]:
    """An instruction example (``data.tasks.InstructionExample``: instruction, input, options, optional image) as
    one user turn under template number ``template``, ending with ``Assistant:``; instruction tuning trains on it
    and ``eval/instruct.py`` scores it."""
    text = instruction_text(example.instruction, example.input, template, example.options)
    return chat_prompt([Turn("user", text, [example.image] if example.image else [])], encode_user=encode_user)


_SLOT = "\x00turn{}\x00"  # stands for a turn's words while the chat template renders; never in a template
_SLOTS = re.compile("\x00turn(\\d+)\x00")


@dataclass(frozen=True)
class ChatFormat:
    """How a conversation becomes a prompt and where an answer ends: the plain ``User: / Assistant:`` lines of the
    world's instructions (no ``template``), or a pretrained chat model's own Jinja chat template (SmolLM2's
    ChatML), whose answers end at its end-of-turn token instead of a newline."""

    template: str | None = None
    specials: frozenset[str] = frozenset()  # the tokenizer's special tokens, written by the template as one id each
    eos: str | None = None  # the token that ends an answer under the template (e.g. <|im_end|>)

    @property
    def stop(self) -> tuple[str, ...]:
        """Strings that end an answer as it is written: a newline under the plain format, none under a template."""
        return () if self.template else CHAT_STOP

    def prompt(self, turns: Sequence[Turn], encode_user: bool = False) -> list[Segment]:
        """The segments of ``turns`` ending where the model writes its answer."""
        if self.template is None:
            return chat_prompt(turns, encode_user)
        messages = [{"role": turn.role, "content": _SLOT.format(i)} for i, turn in enumerate(turns)]
        text = render_chat(self.template, messages)
        out: list[Segment] = []
        for i, piece in enumerate(_SLOTS.split(text)):
            if i % 2 == 0:
                out += self._template_text(piece)
                continue
            turn = turns[int(piece)]
            out += [ImageSeg(image) for image in turn.images]
            words: list[Segment] = [turn.text.strip()]
            out += through_encoder(words) if encode_user and turn.role == "user" else words
        return out

    def _template_text(self, text: str) -> list[Segment]:
        """The template's own text, its special tokens as single ids (the user's words never become one)."""
        if not self.specials:
            return [text] if text else []
        pattern = "(" + "|".join(re.escape(t) for t in sorted(self.specials, key=len, reverse=True)) + ")"
        return [SpecialSeg(p) if p in self.specials else p for p in re.split(pattern, text) if p]


def chat_template(tokenizer_files: Mapping[str, str]) -> str | None:
    """A decoder tokenizer's Jinja chat template, from its files by name: ``chat_template.jinja``, else the
    ``chat_template`` of ``tokenizer_config.json``; None without one."""
    config = json.loads(tokenizer_files.get("tokenizer_config.json", "{}"))
    template = tokenizer_files.get("chat_template.jinja") or config.get("chat_template")
    return template if isinstance(template, str) else None


def render_chat(template: str, messages: Sequence[Mapping[str, str]]) -> str:
    """``messages`` rendered by a Jinja chat template with the generation prompt, as transformers'
    ``apply_chat_template(..., tokenize=False, add_generation_prompt=True)`` renders them."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(messages=list(messages), add_generation_prompt=True)


def chat_format(tokenizer_files: Mapping[str, str], specials: frozenset[str]) -> ChatFormat:
    """The chat format of a checkpoint: its decoder tokenizer's chat template (``chat_template``) with the
    end-of-turn token from ``tokenizer_config.json``, else the plain format."""
    template = chat_template(tokenizer_files)
    if template is None:
        return ChatFormat()
    eos = json.loads(tokenizer_files.get("tokenizer_config.json", "{}")).get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return ChatFormat(template, specials, eos if eos in specials else None)
