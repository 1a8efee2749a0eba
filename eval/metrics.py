"""Benchmark metrics that reproduce the official scorers: VQA accuracy, BLEU-1..4 and CIDEr-D.

Numbers are only comparable across papers when the scorer is the official one, quirks included, so each function
here follows a named reference implementation rather than the metric's textbook definition:

- VQA accuracy follows the VQA evaluation code of Agrawal et al. (GT-Vision-Lab/VQA,
  ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at its current commit a013f00, 2021-03-11), also used for
  OK-VQA: both sides are normalised only when the human answers differ (see ``vqa_accuracy``).
- BLEU and CIDEr-D follow the MS-COCO caption evaluation of Chen et al. 2015 (tylin/coco-caption, packaged as
  ``pycocoevalcap``): ``bleu/bleu_scorer.py`` (David Chiang's BLEU, "closest" reference length, corpus level) and
  ``cider/cider_scorer.py`` (Vedantam et al. 2015, which with its clipping and length penalty is CIDEr-D).
- Captions are tokenised by a pure-Python approximation of the Stanford PTB tokenizer that coco-caption runs in
  Java (see ``tokenize_caption``).

All scores are on the scale the official tools print: VQA accuracy in [0, 1] (the VQA script prints 100x),
BLEU in [0, 1], CIDEr-D in [0, 10] (papers print 100x).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------------------
# VQA accuracy
# --------------------------------------------------------------------------------------------------------------

# The official contractions map, entry for entry (including its unreachable capitalised keys, since answers are
# lowercased before the look-up, and its "somebody'd" -> "somebodyd" entry).
VQA_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
VQA_NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
VQA_ARTICLES = frozenset({"a", "an", "the"})
# Apostrophe, colon and period are not in the list: apostrophes survive ("don't"), periods have their own rule.
VQA_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# The official code is Python 2 and compiles its patterns without re.UNICODE, so there \d is [0-9] only: re.ASCII.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d", re.ASCII)
# A period not followed by a digit. The official pattern "(?!<=\d)(\.)(?!\d)" opens with a mistyped look-behind
# that is really a look-ahead for "<=" and always holds, so "3.5" keeps its period while "5." and "1.5." lose theirs.
_PERIOD = re.compile(r"\.(?!\d)", re.ASCII)
# The official call passes re.UNICODE (= 32) where re.sub expects ``count``: at most 32 periods are removed.
_PERIOD_MAX_REMOVALS = int(re.UNICODE)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: each listed mark is deleted when it touches a space (tested on the
    input, not the partly processed text) or when the answer has a digit-comma-digit anywhere, else it becomes a
    space; then periods not followed by a digit are removed."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in VQA_PUNCTUATION:
        out = out.replace(mark, "" if delete_all or mark + " " in text or " " + mark in text else " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_REMOVALS)


def _process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lowercase, number words to digits, drop articles, expand contractions."""
    words = [VQA_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(VQA_CONTRACTIONS.get(word, word) for word in words if word not in VQA_ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """The official full normalisation (what vqaEval.py applies to both sides when the human answers differ):
    newlines/tabs to spaces, strip, punctuation, then lowercase, number words to digits, articles dropped and
    contractions restored ("dont" -> "don't")."""
    return _process_digit_article(_process_punctuation(_clean_whitespace(answer)))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer against the human ``answers`` (10 in VQAv2 and OK-VQA).

    For each human answer, the other ``len(answers) - 1`` form a subset; the prediction scores
    ``min(#matches in the subset / 3, 1)`` on it, and the accuracy is the mean over subsets. This matches
    GT-Vision-Lab/VQA's ``vqaEval.py`` at its current commit a013f00 (2021-03-11) case for case, quirks included:

    - newlines and tabs become spaces and both sides are stripped; then, only when the human answers are not all
      identical, the prediction and every answer are normalised (``normalize_vqa_answer``). When they are all
      identical nothing else is normalised and the match is exact: "two" against ten "2" scores 0, "Yes" against
      ten "yes" scores 0, while "two" against nine "2" and one "3" scores 1;
    - punctuation: each listed mark is deleted where it touches a space in the input (not the partly processed
      text), or everywhere when the input has a digit-comma-digit ("1,000" -> "1000"), else it becomes a space;
      periods not followed by a digit are then deleted ("3.5" keeps its period: the pattern's mistyped
      look-behind ``(?!<=\\d)`` always holds), at most 32 of them (``re.UNICODE`` passed as the count); ``\\d``
      means [0-9] only, as in the tool's Python 2 patterns;
    - number words "none" and "zero" to ten become digits before articles are dropped; the contractions map keeps
      its unreachable capitalised keys ("Im") and its "somebody'd" -> "somebodyd" entry;
    - the subsets leave out one answer by position (the official code compares answer records, which differ by
      ``answer_id``), so repeated answers are each left out once.

    The tool's 2016 version (commit 458a8b2) scored differently: it always normalised the prediction and gave the
    human answers the punctuation step only, and only when they differed, so there "two" against ten "2" scores 1,
    "two" against ten "two" scores 0 and "dont know" against ten "don't know" scores 1 (here 0, 1 and 0). The
    examples of issue 11 describe that old version. Not reproduced: Python 2's older Unicode tables in
    ``lower``/``split``/``strip`` on rare characters (U+0130 lowercased, U+180E as a space).
    """
    if isinstance(answers, str) or len(answers) < 2:
        raise ValueError(
            f"vqa_accuracy needs a list of at least 2 human answers (10 in VQAv2), got {answers!r}; with one answer "
            "every leave-one-out subset is empty and the accuracy is always 0"
        )
    truths = [_clean_whitespace(a) for a in answers]
    pred = _clean_whitespace(prediction)
    if len(set(truths)) > 1:
        truths = [_process_digit_article(_process_punctuation(a)) for a in truths]
        pred = _process_digit_article(_process_punctuation(pred))
    hits = [truth == pred for truth in truths]
    matches = sum(hits)
    # Leaving out a matching answer removes one match from the subset; leaving out any other keeps them all.
    return sum(min(1.0, (matches - hit) / 3) for hit in hits) / len(hits)


def _grouped_means(per_question: Mapping[Hashable, float], groups: Mapping[Hashable, str], what: str) -> dict:
    missing = [qid for qid in per_question if qid not in groups]
    if missing:
        raise ValueError(f"{what} must give a type for every question; missing for {len(missing)}, e.g. {missing[0]!r}")
    scores: dict[str, list[float]] = {}
    for qid, acc in per_question.items():
        scores.setdefault(groups[qid], []).append(acc)
    return {group: float(np.mean(values)) for group, values in scores.items()}


def vqa_score(
    predictions: Mapping[Hashable, str],
    annotations: Mapping[Hashable, Sequence[str]],
    answer_types: Mapping[Hashable, str] | None = None,
    question_types: Mapping[Hashable, str] | None = None,
) -> dict:
    """VQA accuracy over a set of questions, as the official ``VQAEval.evaluate`` reports it (but unrounded, in
    [0, 1]): ``overall`` (mean over questions), ``per_question``, and, when the types are given (question id ->
    type, e.g. "yes/no", "number", "other"), ``per_answer_type`` and ``per_question_type`` means.

    ``predictions`` and ``annotations`` (question id -> human answers) must cover the same question ids.
    """
    _check_same_ids(predictions, annotations, "predictions", "annotations")
    per_question = {qid: vqa_accuracy(predictions[qid], annotations[qid]) for qid in annotations}
    result: dict = {"overall": float(np.mean(list(per_question.values()))), "per_question": per_question}
    if answer_types is not None:
        result["per_answer_type"] = _grouped_means(per_question, answer_types, "answer_types")
    if question_types is not None:
        result["per_question_type"] = _grouped_means(per_question, question_types, "question_types")
    return result


# --------------------------------------------------------------------------------------------------------------
# Caption metrics
# --------------------------------------------------------------------------------------------------------------

# Tokens coco-caption drops after PTB tokenisation (pycocoevalcap/tokenizer/ptbtokenizer.py).
COCO_PUNCTUATION = frozenset(
    {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_PTB_WORD_SPLITS = {
    "cannot": "can not",
    "gonna": "gon na",
    "gotta": "got ta",
    "wanna": "wan na",
    "gimme": "gim me",
    "lemme": "lem me",
}
# Not before a period and , ; or : ("cannot.," stays "cannot.", as below).
_PTB_WORD_SPLIT = re.compile(r"\b(" + "|".join(_PTB_WORD_SPLITS) + r")\b(?!\.[,;:])")
_CLITIC = re.compile(r"(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_ABBREVIATIONS = r"(?:mrs|mr|ms|dr|prof|jr|sr|st|mt|co|corp|inc|ltd|vs|etc|ave)\."
_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"  # clitics split off above
    r"|(?:[a-z]\.){2,}(?![^\W\d_])"  # acronyms: u.s., p.m., i.d. (but u.s.x is one word)
    r"|[a-z]\.(?![^\W\d_])"  # an initial: "a.", "j. smith", "x.5" -> "x. 5" (but a.b is one word)
    rf"|\b{_ABBREVIATIONS}(?!\w)"
    r"|\bnos?\.(?=\s*\d)"  # "no. 5", "no.1"
    r"|\d+(?:[.,:/]\d+)+"  # 3.5, 1,000, 10:30, 1/2
    r"|\w+(?:[-&.]\w+|'[^\W\d_]+)*\.(?=[,;:])"  # a period before , ; or : stays: "blue.," -> "blue." (not "a/c.,")
    r"|\w+(?:[-&/.]\w+|'[^\W\d_]+)*"  # black-and-white, and/or, o'clock, cows.it
    r"|\.\.\.|--|[!?]+|\S"
)


def tokenize_caption(caption: str) -> str:
    """Lowercased, PTB-style tokens of ``caption`` joined by spaces, with coco-caption's punctuation removed.

    coco-caption runs Stanford CoreNLP 3.4.1's PTBTokenizer (Java, ``-lowerCase -preserveLines``) and drops the
    tokens in ``COCO_PUNCTUATION``. This is a pure-Python approximation of that: clitics are split as PTB does
    ("don't" -> "do n't", "man's" -> "man 's", "cannot" -> "can not"); hyphenated and slashed words, numbers
    ("3.5", "1,000", "10:30"), acronyms ("u.s.", "p.m.") and common abbreviations ("mr.", "st.") stay whole;
    brackets become ``-lrb-``/``-rsb-``-style tokens, which coco keeps (its list has only upper-case escapes);
    quotes and the listed punctuation are dropped. As in Java, a period stays on a single letter ("a.", "j.") and
    on a word followed by , ; or : ("blue.," -> "blue."), and "no." before a number is a token. Known differences
    from the Java tokenizer: the rest of its abbreviation list, "y'all"/"'twas"/"'90s" splitting, "@handles",
    emoticons, and marks glued between other marks and characters with no space (",3", "d?x", ";(").
    On words with punctuation attached at either end the two agree (tests/test_metrics.py checks this against
    the Java tokenizer on fixed and random captions).
    """
    text = caption.replace("\n", " ").lower().translate(_QUOTES)
    text = _PTB_WORD_SPLIT.sub(lambda m: _PTB_WORD_SPLITS[m.group(1)], text)
    text = _CLITIC.sub(r"\1 \2", text)
    tokens = (_BRACKETS.get(token, token) for token in _TOKEN.findall(text))
    return " ".join(token for token in tokens if token not in COCO_PUNCTUATION and token != '"')


def _check_same_ids(a: Mapping, b: Mapping, name_a: str, name_b: str) -> None:
    if set(a) != set(b):
        only_a, only_b = set(a) - set(b), set(b) - set(a)
        raise ValueError(
            f"{name_a} and {name_b} must have the same ids: {len(only_a)} only in {name_a}, "
            f"{len(only_b)} only in {name_b} (e.g. {next(iter(only_a or only_b))!r})"
        )
    if not a:
        raise ValueError(f"{name_a} is empty")


def _caption_words(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], tokenize: bool
) -> tuple[list[list[str]], list[list[list[str]]]]:
    _check_same_ids(predictions, references, "predictions", "references")
    split = (lambda s: tokenize_caption(s).split()) if tokenize else str.split
    hyps, refs = [], []
    for key in references:
        if not isinstance(predictions[key], str):
            raise ValueError(f"prediction for {key!r} must be one string, got {type(predictions[key]).__name__}")
        if isinstance(references[key], str) or len(references[key]) == 0:
            raise ValueError(f"references for {key!r} must be a non-empty list of strings, got {references[key]!r}")
        hyps.append(split(predictions[key]))
        refs.append([split(r) for r in references[key]])
    return hyps, refs


def _ngram_counts(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def bleu(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    n: int = 4,
    tokenize: bool = True,
) -> dict[str, float]:
    """Corpus BLEU-1..n as coco-caption's ``Bleu(4)`` computes it: ``{"bleu_1": ..., "bleu_n": ...}``.

    Clipped n-gram matches and candidate n-gram counts are summed over the corpus; the reference length of each
    caption is the "closest" one (ties go to the shorter reference); each precision is
    ``(matches + 1e-15) / (candidates + 1e-9)`` (so an n-gram order with no match gives a near-zero, not an
    undefined, score); BLEU-k is the geometric mean of precisions 1..k times the corpus brevity penalty
    ``exp(1 - r/c)`` when ``c < r``. ``tokenize=False`` takes captions as already tokenised (split on whitespace).
    """
    tiny, small = 1e-15, 1e-9
    hyps, refs = _caption_words(predictions, references, tokenize)
    correct, guess = [0] * n, [0] * n
    hyp_len = ref_len = 0
    for hyp, ref_set in zip(hyps, refs, strict=True):
        max_ref: Counter = Counter()
        for ref in ref_set:
            max_ref |= _ngram_counts(ref, n)  # element-wise max
        for gram, count in _ngram_counts(hyp, n).items():
            correct[len(gram) - 1] += min(count, max_ref[gram])
        for k in range(n):
            guess[k] += max(0, len(hyp) - k)
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in ref_set)[1]
    ratio = (hyp_len + tiny) / (ref_len + small)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = {}, 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores[f"bleu_{k + 1}"] = product ** (1 / (k + 1)) * brevity
    return scores


def cider_d_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
    tokenize: bool = True,
) -> dict[Hashable, float]:
    """Per-image CIDEr-D, as coco-caption's ``Cider`` scorer computes it.

    Each caption is a tf-idf vector per n-gram order 1..n, with raw counts as tf and ``log(#images) -
    log(max(1, df))`` as idf, where df counts the images whose references contain the n-gram (so the idf depends
    on the evaluated set). Against each reference, the order-k similarity is ``sum_g min(c_g, r_g) * r_g /
    (|c| |r|)`` (candidate weights clipped by the reference's), times the Gaussian length penalty
    ``exp(-delta^2 / (2 sigma^2))`` on the difference ``delta`` of the two captions' lengths. The image score is
    10 x the mean over orders of the mean over references.
    """
    hyps, refs = _caption_words(predictions, references, tokenize)
    hyp_counts = [_ngram_counts(h, n) for h in hyps]
    ref_counts = [[_ngram_counts(r, n) for r in ref_set] for ref_set in refs]
    doc_freq: Counter = Counter()
    for ref_set in ref_counts:
        doc_freq.update(set().union(*ref_set))
    log_images = math.log(len(hyps))

    def tfidf(counts: Counter) -> tuple[dict, list[float], int]:
        weights = {gram: count * (log_images - math.log(max(1.0, doc_freq[gram]))) for gram, count in counts.items()}
        norms = [0.0] * n
        for gram, weight in weights.items():
            norms[len(gram) - 1] += weight * weight
        # coco counts bigrams here; that differs from the word count only for captions of 0 or 1 words, where
        # every similarity is 0 anyway.
        words = sum(count for gram, count in counts.items() if len(gram) == 1)
        return weights, [math.sqrt(x) for x in norms], words

    scores = {}
    for key, hyp, ref_set in zip(references, hyp_counts, ref_counts, strict=True):
        vec, norm, length = tfidf(hyp)
        total = 0.0
        for ref in ref_set:
            ref_vec, ref_norm, ref_length = tfidf(ref)
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * sigma**2))
            sims = [0.0] * n
            for gram, weight in vec.items():
                ref_weight = ref_vec.get(gram, 0.0)
                sims[len(gram) - 1] += min(weight, ref_weight) * ref_weight
            for k in range(n):
                if norm[k] != 0 and ref_norm[k] != 0:
                    sims[k] /= norm[k] * ref_norm[k]
            total += sum(sims) / n * penalty
        scores[key] = 10.0 * total / len(ref_set)
    return scores


def cider_d(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
    tokenize: bool = True,
) -> float:
    """Corpus CIDEr-D: the mean of ``cider_d_scores`` over images (coco-caption's reported "CIDEr")."""
    return float(np.mean(list(cider_d_scores(predictions, references, n, sigma, tokenize).values())))


# --------------------------------------------------------------------------------------------------------------
# Classification and trials
# --------------------------------------------------------------------------------------------------------------


def accuracy(predictions: Sequence | np.ndarray, labels: Sequence | np.ndarray) -> float:
    """Fraction of ``predictions`` equal to ``labels`` (same length, at least one)."""
    pred, gold = np.asarray(predictions), np.asarray(labels)
    if pred.shape != gold.shape or pred.ndim != 1 or len(pred) == 0:
        raise ValueError(f"expected two equal-length non-empty 1-D sequences, got shapes {pred.shape} and {gold.shape}")
    return float(np.mean(pred == gold))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation (``ddof=0``) of per-trial scores, as few-shot results are reported."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(arr.mean()), float(arr.std())
