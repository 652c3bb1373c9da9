"""Prompts the text encoder cannot read whole (case 31): checked against the backend's own
tokenizer (the embedded model's holds 32 tokens) before anything is generated."""

import json
import os

import pytest

from engine.errors import UserError
from engine.job.prompt_limits import RECORD, describe_limit, limit_prompts
from engine.job.prompts import build_pool
from engine.spec import parse_spec

from .conftest import BASE_SPEC

FIELD = os.path.join(os.path.dirname(__file__), "fixtures", "field")
FILLER = "a photograph of a photograph, " * 8  # 48 tokens on the embedded model's tokenizer


def diffusion_job(tmp_path, prompts: list[str], head="none", classes=("star", "circle"), **fields):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return parse_spec({**BASE_SPEC, "output": str(tmp_path / "out"), "classes": list(classes), "lower_bound": 1,
                       "generator": {"name": "diffusion", "params": {"model": "embedded:shapes"}},
                       "label_head": {"name": head}, "prompts": {"source": "jsonl", "path": str(path)}, **fields})


def checked(spec):
    inputs: dict = {}
    return limit_prompts(spec, build_pool(spec, inputs), inputs), inputs.get(RECORD)


def test_a_class_word_past_the_limit_is_an_error_before_anything_is_written(tmp_path):
    """Case 31: the only class word, 'star', ends at token 53 of a 32-token encoder."""
    spec = diffusion_job(tmp_path, [], head="attention")
    spec.prompts.path = os.path.join(FIELD, "long_prompt.jsonl")
    with pytest.raises(UserError) as info:
        checked(spec)
    assert str(info.value).startswith("prompts: expected every class word within the text encoder's 32-token limit "
                                      "(embedded:shapes tokenizer), got 2 of 2 prompt(s) where one falls past it")
    assert "'star' ends at token 53 of 53, limit 32" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_reject_leaves_such_prompts_out_and_counts_truncations(tmp_path):
    spec = diffusion_job(tmp_path, [FILLER + "with a star", "a star, " + FILLER, "a circle"], long_prompts="reject")
    pool, record = checked(spec)
    assert [item.prompt for item in pool] == ["a star, " + FILLER, "a circle"]
    assert (record["limit"], record["truncated"], record["left_out"]) == (32, 1, 1)
    assert describe_limit(record) == ("1 truncated at the text encoder's 32-token limit (every class word kept), "
                                      "1 left out (a class word past it)")


def test_the_backends_quality_suffix_counts(tmp_path):
    """The backend appends quality_suffix to every prompt: the text it encodes is what is checked."""
    spec = diffusion_job(tmp_path, ["a star on a table"])
    assert checked(spec)[1]["truncated"] == 0
    spec = parse_spec({**spec.model_dump(), "generator": {"name": "diffusion", "params": {
        "model": "embedded:shapes", "quality_suffix": ", " + FILLER}}})  # params are validated once, with the spec
    assert checked(spec)[1]["truncated"] == 1


def test_the_attention_heads_class_only_prompt_must_hold_every_class(tmp_path):
    """Unknown words split into pieces: three long class names (12, 14 and 15 tokens) overflow the
    32-token class prompt, though the prompt naming them (42 tokens with all three) is no longer."""
    names = ["quadrilateralish", "parallelogrammatic", "zzyzx qwxv jjkkqq"]
    spec = diffusion_job(tmp_path, [], head="attention", classes=names)
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "a " + names[0]}) + "\n"
                                           + json.dumps({"prompt": "x", "classes": names}) + "\n")
    with pytest.raises(UserError, match="'zzyzx qwxv jjkkqq' does not fit the attention head's class-only prompt "
                                        r"\(43 tokens, limit 32\)"):
        checked(spec)
    spec.long_prompts = "reject"
    pool, record = checked(spec)
    assert [item.prompt for item in pool] == ["a " + names[0]] and record["left_out"] == 1
    spec.label_head.name = "none"  # no class-only prompt to fill
    assert len(checked(spec)[0]) == 2


def test_backends_without_a_tokenizer_are_not_checked(tmp_path):
    spec = parse_spec({**BASE_SPEC, "output": str(tmp_path / "out")})
    pool, record = checked(spec)
    assert record is None and pool == build_pool(spec)


def test_the_counts_are_recorded_with_the_inputs_and_shown_by_status(tmp_path):
    from engine.job.runner import open_job
    from engine.job.status import format_status, job_status

    spec = diffusion_job(tmp_path, ["a star, " + FILLER, "a circle"])
    spec.output = f"memory://limits-{tmp_path.name}"
    inputs: dict = {}
    limit_prompts(spec, build_pool(spec, inputs), inputs)
    store = open_job(spec, inputs)  # what a job records before its first wave
    assert "  prompts: 1 truncated at the text encoder's 32-token limit (every class word kept), 0 left out" \
        in format_status(job_status(store))
    store.delete("", recursive=True)
