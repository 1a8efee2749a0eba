"""One flag spelling: underscores, with the hyphenated spelling accepted and reported as deprecated."""

from eval.flags import FlagParser, canonical_argv


def test_hyphenated_spelling_of_a_known_flag_is_rewritten_with_a_message(capsys):
    known = {"--encode_input", "--max_new_tokens", "--out"}
    argv = ["--encode-input", "--max-new-tokens=4", "--out", "a-b", "--not-known", "-x"]
    assert canonical_argv(argv, known, "prog") == [
        "--encode_input",
        "--max_new_tokens=4",
        "--out",
        "a-b",
        "--not-known",
        "-x",
    ]
    err = capsys.readouterr().err
    assert "--encode-input is deprecated; use --encode_input" in err
    assert "--max-new-tokens is deprecated; use --max_new_tokens" in err
    assert "not-known" not in err


def test_flag_parser_reads_both_spellings_into_one_destination(capsys):
    p = FlagParser(prog="p")
    p.add_argument("--icl_mode", default="causal")
    p.add_argument("--batch_size", type=int, default=16)
    assert vars(p.parse_args(["--icl-mode", "encoder", "--batch_size", "2"])) == {
        "icl_mode": "encoder",
        "batch_size": 2,
    }
    assert "--icl-mode is deprecated" in capsys.readouterr().err
    assert vars(p.parse_args([])) == {"icl_mode": "causal", "batch_size": 16}
    assert capsys.readouterr().err == ""
