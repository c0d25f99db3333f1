"""The AlpacaEval 2 weighted judge: its prompt, position switch, logprob parsing, win rate and LC."""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from aftlib import ChatRequest, Completion, ConfigError, InputError, Message, Sample, TokenLogprob
from aftlib.engines import Engine
from aftlib.evaluate import (
    AlpacaEvalJudge,
    EvalItem,
    Judgment,
    alpaca_eval_preference,
    alpaca_eval_switched,
)
from aftlib.testing import FakeEngine

DATA = Path(__file__).parent / "data" / "judge"
PROMPT = DATA / "alpaca_eval_clf.txt"
BASELINE = DATA / "alpaca_eval_gpt4_1106_preview_10.json"

pytestmark = pytest.mark.anyio


def expected_messages(instruction: str, output_1: str, output_2: str) -> list[dict[str, str]]:
    """The messages alpaca_eval sends, built from the original prompt file the way alpaca_eval does.

    Each placeholder's first occurrence is replaced in turn (not ``str.format``: the prompt holds literal
    braces), the text is stripped, split on ``<|im_start|>``; a block's first line is its role and the
    rest, up to ``<|im_end|>``, stripped, its content.
    """
    text = PROMPT.read_text(encoding="utf-8")
    for name, value in (("instruction", instruction), ("output_1", output_1), ("output_2", output_2)):
        text = text.replace("{" + name + "}", value, 1)
    messages = []
    for block in text.strip().split("<|im_start|>")[1:]:
        role, rest = block.split("\n", 1)
        messages.append({"role": role.strip(), "content": rest.split("<|im_end|>", 1)[0].strip()})
    return messages


def baseline_items() -> list[EvalItem]:
    """Items of the 10 baseline outputs with a model output that differs from each."""
    records = json.loads(BASELINE.read_text(encoding="utf-8"))
    return [
        EvalItem(str(i), (r["instruction"],), (f"Model answer {i}: {{not a placeholder}}",), (r["output"],))
        for i, r in enumerate(records)
    ]


def top_script(top: Sequence[tuple[str, float]], token: str = "M") -> FakeEngine:
    """A judge engine whose first generated token has the top log probabilities ``top``."""
    return FakeEngine(
        handler=lambda request, index: token,
        logprobs=lambda request, index, text: [TokenLogprob(token, top[0][1] if top else -1.0, top)],
    )


def as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Messages as ``{"role", "content"}`` dicts."""
    return [{"role": m.role, "content": m.content} for m in messages]


# --- the prompt ---


TRICKY = [
    ('Say {hi} in JSON: {"a": 1}', "  {{ 7 * 7 }} {% for %}\n", 'Quote: """ and {output_2}'),
    ("What is 2 + 2?", "4", "Four."),
    ("", "", "x"),
    ("Unicode: é ü 字 🙂", "\n\nleading and trailing blank lines\n\n", "<b>html</b>"),
]


@pytest.mark.parametrize(("instruction", "output_1", "output_2"), TRICKY)
def test_builtin_template_renders_the_original_prompt_byte_for_byte(
    instruction: str, output_1: str, output_2: str
) -> None:
    """The built-in ``alpaca_eval_clf`` template gives the original file's system and user messages.

    The expected messages are built from the shipped prompt file as alpaca_eval builds them; values with
    braces, Jinja syntax, triple quotes and blank lines reach the prompt literally.
    """
    judge = AlpacaEvalJudge(FakeEngine())
    expected = expected_messages(instruction, output_1, output_2)
    assert as_dicts(judge.messages(instruction, output_1, output_2)) == expected
    assert [m["role"] for m in expected] == ["system", "user"]


def test_template_matches_alpaca_eval_s_own_prompt_building() -> None:
    """With alpaca-eval installed, its ``make_prompts`` and ``prompt_to_chatml`` give the same messages."""
    pd = pytest.importorskip("pandas")
    utils = pytest.importorskip("alpaca_eval.utils")
    judge = AlpacaEvalJudge(FakeEngine())
    template = PROMPT.read_text(encoding="utf-8")
    for instruction, output_1, output_2 in TRICKY:
        df = pd.DataFrame([{"instruction": instruction, "output_1": output_1, "output_2": output_2}])
        prompts, _ = utils.make_prompts(df, template)
        theirs = utils.prompt_to_chatml(prompts[0].strip())
        assert as_dicts(judge.messages(instruction, output_1, output_2)) == theirs


def test_placeholder_text_inside_an_instruction_stays_literal() -> None:
    """An instruction holding ``{output_1}`` reaches the judge as written; each output fills its own field.

    (alpaca_eval's sequential ``str.replace`` would put the first output inside such an instruction and
    leave the real field unfilled; aftlib never treats data as part of the prompt.)
    """
    judge = AlpacaEvalJudge(FakeEngine())
    user = judge.messages("Explain {output_1}", "FIRST", "SECOND")[1].content
    assert '"instruction": """Explain {output_1}""",' in user
    assert '"output": """FIRST"""' in user
    assert '"output": """SECOND"""' in user


async def test_requests_are_sent_byte_for_byte_with_alpaca_eval_s_sampling() -> None:
    """Each request is the prompt with the baseline shown first unless switched, sampled as alpaca_eval.

    One token, temperature 1, the top 5 log probabilities, one sample; ``output_1`` is the baseline for
    an unswitched instruction and the model's output for a switched one.
    """
    engine = top_script([("m", -0.1), ("M", -2.0)])
    judge = AlpacaEvalJudge(engine)
    items = baseline_items()
    for item in items:
        await judge.judge(item)
    assert len(engine.requests) == len(items)
    switched = [alpaca_eval_switched(item.turns[0], 0) for item in items]
    assert any(switched), "the 10 items should exercise both orders"
    assert not all(switched), "the 10 items should exercise both orders"
    for item, request, swap in zip(items, engine.requests, switched, strict=True):
        first, second = (item.answers[0], item.reference[0]) if swap else (item.reference[0], item.answers[0])
        assert as_dicts(request.messages) == expected_messages(item.turns[0], first, second)
        s = request.sampling
        assert (s.max_tokens, s.temperature, s.logprobs, s.n, s.top_p) == (1, 1.0, 5, 1, 1.0)
        assert request.lora is None


# --- the position switch ---


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_switch_matches_alpaca_eval_s_formula(seed: int) -> None:
    """The switch is ``random.Random("is_switched_outputs" + instruction + str(seed)).choices(...)``."""
    instructions = [item.turns[0] for item in baseline_items()] + ["", "a", "Ünïcode 字"]
    for instruction in instructions:
        expected = random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True], k=1)[
            0
        ]
        assert alpaca_eval_switched(instruction, seed) is expected


def test_switch_matches_alpaca_eval_s_processor() -> None:
    """With alpaca-eval installed, its ``RandomSwitchTwoColumnsProcessor`` switches the same rows."""
    pd = pytest.importorskip("pandas")
    processors = pytest.importorskip("alpaca_eval.processors")
    instructions = [item.turns[0] for item in baseline_items()]
    for seed in (0, 3):
        processor = processors.RandomSwitchTwoColumnsProcessor(
            two_columns_to_switch=["output_1", "output_2"],
            random_seed_columns=["instruction"],
            _switch_column="is_switched_outputs",
            seed=seed,
        )
        df = pd.DataFrame({"instruction": instructions, "output_1": "b", "output_2": "m"})
        theirs = processor.preprocess(df)["is_switched_outputs"].tolist()
        assert theirs == [alpaca_eval_switched(i, seed) for i in instructions]


async def test_seed_changes_the_order() -> None:
    """The judge's ``seed`` is the annotator's seed: another seed switches other instructions."""
    items = baseline_items()
    orders = {seed: [alpaca_eval_switched(i.turns[0], seed) for i in items] for seed in (0, 1)}
    assert orders[0] != orders[1]
    engine = top_script([("m", 0.0)])
    judge = AlpacaEvalJudge(engine, seed=1)
    judgment = await judge.judge(items[0])
    assert judgment.details["switched"] is orders[1][0]


# --- parsing the first token's top log probabilities ---

LN = math.log
PARSED = [
    pytest.param([("m", LN(0.8)), ("M", LN(0.2))], 2 - 0.8, id="m and M both present"),
    pytest.param([("M", LN(0.3)), ("x", LN(0.1)), ("m", LN(0.6))], 2 - 0.6 / 0.9, id="both, others between"),
    pytest.param([("m", -0.5), ("The", -1.0)], 1.0, id="M missing: -inf"),
    pytest.param([("M", -0.5), ("Both", -1.0)], 2.0, id="m missing: -inf"),
    pytest.param([("The", -0.1), ("Output", -2.0), (" m", -3.0), ("MM", -4.0)], math.nan, id="others only"),
    pytest.param([], math.nan, id="no top tokens"),
    pytest.param([("m", LN(0.1)), ("M", LN(0.4)), ("m", LN(0.4))], 1.5, id="a repeated token: the last wins"),
]


@pytest.mark.parametrize(("top", "expected"), PARSED)
def test_preference_from_top_logprobs(top: list[tuple[str, float]], expected: float) -> None:
    """Only exactly ``m`` and ``M`` count; a missing one is -inf; neither gives NaN; ``2 - p(m)``."""
    got = alpaca_eval_preference(top)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)
        assert 1.0 <= got <= 2.0


@pytest.mark.parametrize(("top", "expected"), PARSED)
def test_preference_matches_alpaca_eval_s_logprob_parser(
    top: list[tuple[str, float]], expected: float
) -> None:
    """With alpaca-eval installed, its ``logprob_parser`` (m over m, M; not binarized) agrees."""
    parsers = pytest.importorskip("alpaca_eval.completion_parsers")
    completion = {"logprobs": {"content": [{"top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}}
    (theirs,) = parsers.logprob_parser(completion, "m", ["m", "M"], is_binarize=False)
    ours = alpaca_eval_preference(top)
    assert (math.isnan(theirs) and math.isnan(ours)) or ours == pytest.approx(theirs, abs=1e-12)


@pytest.mark.parametrize(("top", "expected"), PARSED)
async def test_judgment_maps_a_switched_preference_back(
    top: list[tuple[str, float]], expected: float
) -> None:
    """An unswitched item's score is the parsed preference; a switched one's is ``3 - x``; NaN is None."""
    items = baseline_items()
    plain = next(i for i in items if not alpaca_eval_switched(i.turns[0]))
    swapped = next(i for i in items if alpaca_eval_switched(i.turns[0]))
    judge = AlpacaEvalJudge(top_script(top))
    for item, mapped in ((plain, expected), (swapped, 3 - expected)):
        judgment = await judge.judge(item)
        if math.isnan(expected):
            assert judgment.score is None
            assert judgment.details["preference"] is None
            assert "neither 'm' nor 'M'" in judgment.details["failure"]
        else:
            assert judgment.score == pytest.approx(mapped, abs=1e-12)
            assert judgment.details["raw_preference"] == pytest.approx(expected, abs=1e-12)
            assert judgment.details["failure"] is None
        assert judgment.details["switched"] is (item is swapped)
        assert judgment.details["top_logprobs"] == [list(pair) for pair in top]
        assert judgment.details["completion"] == "M"


async def test_judgment_details_have_their_documented_shape() -> None:
    """A judgment's details: the instruction, order, parsed numbers, raw completion and output lengths."""
    item = baseline_items()[0]
    judge = AlpacaEvalJudge(top_script([("M", -0.25), ("m", -1.5)]))
    judgment = await judge.judge(item)
    assert set(judgment.details) == {
        "instruction",
        "generator",
        "switched",
        "identical",
        "preference",
        "raw_preference",
        "logprob_m",
        "logprob_M",
        "top_logprobs",
        "completion",
        "failure",
        "output_chars",
        "baseline_chars",
    }
    assert judgment.details["logprob_m"] == -1.5
    assert judgment.details["logprob_M"] == -0.25
    assert judgment.details["output_chars"] == len(item.answers[0])
    assert judgment.details["baseline_chars"] == len(item.reference[0])
    assert judgment.judge == "alpaca_eval"
    assert judgment.usage.requests == 1
    json.dumps(judgment.to_json(), allow_nan=False)


async def test_a_sample_without_tokens_or_logprobs_gives_no_preference() -> None:
    """No generated token, or an engine answer without log probabilities: no preference, with a reason."""
    item = baseline_items()[0]
    empty = FakeEngine(handler=lambda request, index: "", logprobs=lambda request, index, text: [])
    judgment = await AlpacaEvalJudge(empty).judge(item)
    assert judgment.score is None
    assert judgment.details["failure"] == "the judge generated no token"

    class NoLogprobs(FakeEngine):  # claims support, then returns none
        def _logprobs(self, request: ChatRequest, index: int, text: str) -> None:
            return None

    judgment = await AlpacaEvalJudge(NoLogprobs(name="quiet")).judge(item)
    assert judgment.score is None
    assert judgment.details["failure"] == "engine 'quiet' returned no log probabilities"


async def test_identical_outputs_are_a_half_preference_without_a_call() -> None:
    """When the model's output equals the baseline's, the preference is 1.5 and the engine is not called."""
    engine = top_script([("m", 0.0)])
    judge = AlpacaEvalJudge(engine)
    item = EvalItem("same", ("Say hi.",), ("Hi!",), ("Hi!",))
    judgment = await judge.judge(item)
    assert judgment.score == 1.5
    assert judgment.details["identical"] is True
    assert judge.request(item) is None
    assert engine.requests == []


async def test_an_item_without_its_parts_is_an_input_error() -> None:
    """An item without instruction, output or baseline output is an InputError naming the item."""
    judge = AlpacaEvalJudge(FakeEngine())
    with pytest.raises(InputError, match=r"item 'x'.*baseline's output"):
        await judge.judge(EvalItem("x", ("q",), ("a",)))
    with pytest.raises(InputError, match=r"item 'y'.*model's output"):
        await judge.judge(EvalItem("y", ("q",), (), ("b",)))


class PlainEngine(Engine):
    """An engine that gives no log probabilities."""

    async def generate(self, request: ChatRequest) -> Completion:
        """One fixed sample."""
        return Completion([Sample(0, "m")])


def test_an_engine_without_logprobs_is_refused_when_the_judge_is_built() -> None:
    """Building the judge on an engine without log probabilities is a ConfigError naming the engine."""
    with pytest.raises(
        ConfigError, match=r"the AlpacaEval judge needs log probabilities.*'plain'.*PlainEngine"
    ):
        AlpacaEvalJudge(PlainEngine(name="plain"))


def test_bad_settings_are_config_errors() -> None:
    """Sampling without logprobs, several samples, a non-integer seed: ConfigError with the key path."""
    from aftlib import SamplingParams

    with pytest.raises(ConfigError, match=r"sampling.logprobs"):
        AlpacaEvalJudge(FakeEngine(), sampling=SamplingParams(max_tokens=1))
    with pytest.raises(ConfigError, match=r"sampling.n"):
        AlpacaEvalJudge(FakeEngine(), sampling=SamplingParams(max_tokens=1, logprobs=5, n=2))
    with pytest.raises(ConfigError, match=r"seed"):
        AlpacaEvalJudge(FakeEngine(), seed="0")  # type: ignore[arg-type]


# --- the win rate ---


def judgment(score: float | None, instruction: str = "i", **details: object) -> Judgment:
    """A judgment as the judge writes it."""
    return Judgment(instruction, "alpaca_eval", score, {"instruction": instruction, **details})


def test_win_rate_and_standard_error_on_a_known_set() -> None:
    """Win rate = mean(preference - 1) * 100, standard error = sample std / sqrt(n) * 100; NaN dropped."""
    scores = [1.0, 2.0, 1.5, 1.25, None, 1.75, 1.9]
    judge = AlpacaEvalJudge(FakeEngine())
    summary = judge.summarize([judgment(s, identical=(s == 1.5)) for s in scores])
    shifted = [0.0, 1.0, 0.5, 0.25, 0.75, 0.9]
    mean = sum(shifted) / 6
    std = math.sqrt(sum((v - mean) ** 2 for v in shifted) / 5)
    m = summary.metrics
    assert summary.judge == "alpaca_eval"
    assert summary.n == 7
    assert m["win_rate"] == pytest.approx(mean * 100)
    assert m["standard_error"] == pytest.approx(std / math.sqrt(6) * 100)
    assert (m["n_total"], m["n_wins"], m["n_wins_base"], m["n_draws"]) == (6, 3, 2, 1)
    assert m["n_no_preference"] == 1
    assert m["n_identical"] == 1
    # discrete: 0, 1, draw, 0, 1, 1
    assert m["discrete_win_rate"] == pytest.approx((0 + 1 + 0.5 + 0 + 1 + 1) / 6 * 100)
    assert any("1 of 7 judgment(s) have no preference" in note for note in summary.notes)


def test_win_rate_matches_alpaca_eval_s_get_winrate() -> None:
    """With alpaca-eval installed, its ``get_winrate`` gives the same win rate, error and counts."""
    metrics = pytest.importorskip("alpaca_eval.metrics")
    scores = [1.0, 2.0, 1.5, 1.25, None, 1.75, 1.9, 1.01]
    theirs = metrics.get_winrate([{"preference": math.nan if s is None else s} for s in scores])
    ours = AlpacaEvalJudge(FakeEngine()).summarize([judgment(s) for s in scores]).metrics
    assert ours["win_rate"] == pytest.approx(theirs["win_rate"])
    assert ours["standard_error"] == pytest.approx(theirs["standard_error"])
    assert ours["discrete_win_rate"] == pytest.approx(theirs["discrete_win_rate"])
    for key in ("n_wins", "n_wins_base", "n_draws", "n_total"):
        assert ours[key] == theirs[key], key


def test_summary_of_nothing_has_no_numbers() -> None:
    """No judgments (or none with a preference): the win rate and its error are None."""
    summary = AlpacaEvalJudge(FakeEngine()).summarize([judgment(None)])
    assert summary.metrics["win_rate"] is None
    assert summary.metrics["standard_error"] is None
    assert summary.metrics["n_no_preference"] == 1


# --- the length-controlled win rate ---


def lc_note(summary_notes: Sequence[str]) -> str:
    """The note that says why the LC win rate is missing."""
    (note,) = [n for n in summary_notes if n.startswith("length-controlled win rate not computed")]
    return note


def test_lc_is_missing_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the alpaca-eval package the LC win rate is None and the note says to install it."""
    monkeypatch.setitem(sys.modules, "alpaca_eval.metrics", None)
    summary = AlpacaEvalJudge(FakeEngine()).summarize([judgment(1.5)])
    assert summary.metrics["length_controlled_win_rate"] is None
    assert "alpaca-eval package is not installed" in lc_note(summary.notes)
    assert "aftlib[alpaca_eval]" in lc_note(summary.notes)


def test_lc_is_missing_without_the_data_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without df_gamed.csv in lc_data_dir, or in the package's cache, the note names where it looked."""
    pytest.importorskip("alpaca_eval.metrics.glm_winrate")
    summary = AlpacaEvalJudge(FakeEngine(), lc_data_dir=tmp_path).summarize([judgment(1.5)])
    note = lc_note(summary.notes)
    assert summary.metrics["length_controlled_win_rate"] is None
    assert f"df_gamed.csv of the dataset tatsu-lab/alpaca_eval is not in {tmp_path}" in note

    from alpaca_eval import constants

    monkeypatch.setattr(constants, "DEFAULT_CACHE_DIR", str(tmp_path / "hub"))
    note = lc_note(AlpacaEvalJudge(FakeEngine()).summarize([judgment(1.5)]).notes)
    assert f"is not in the Hugging Face cache {tmp_path / 'hub'} (dataset tatsu-lab/alpaca_eval)" in note


def write_gamed(folder: Path, n: int) -> list[float]:
    """A small ``df_gamed.csv`` in the package's layout: two gamed baselines over ``n`` instructions."""
    rng = random.Random(5)
    difficulty = [rng.uniform(-1, 1) for _ in range(n)]
    lines = ["model,index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline"]
    for model, sign in (("gpt4_1106_preview_verbose", 1), ("gpt4_1106_preview_concise", -1)):
        for i in range(n):
            pref = min(max(0.5 + sign * 0.3 + rng.uniform(-0.2, 0.2), 0.0), 1.0)
            delta = -sign * rng.uniform(0.2, 2.0)
            lines.append(f"{model},{i},{pref},{delta},{difficulty[i]},False")
    (folder / "df_gamed.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return difficulty


def lc_judgments(n: int) -> list[Judgment]:
    """``n`` judgments whose preference grows with the model's output length."""
    rng = random.Random(11)
    out = []
    for i in range(n):
        output_chars = rng.randint(50, 3000)
        baseline_chars = rng.randint(500, 2000)
        pref = min(max(1.5 + (output_chars - baseline_chars) / 5000 + rng.uniform(-0.3, 0.3), 1.0), 2.0)
        score = None if i == 3 else pref
        out.append(
            judgment(score, f"instruction {i}", output_chars=output_chars, baseline_chars=baseline_chars)
        )
    return out


def test_lc_is_missing_without_the_canonical_order_or_the_whole_set(tmp_path: Path) -> None:
    """LC needs instructions= (canonical order), as many as the metric's data has, each judged once."""
    pytest.importorskip("alpaca_eval.metrics.glm_winrate")
    write_gamed(tmp_path, 12)
    judgments = lc_judgments(12)
    order = [f"instruction {i}" for i in range(12)]
    note = lc_note(AlpacaEvalJudge(FakeEngine(), lc_data_dir=tmp_path).summarize(judgments).notes)
    assert "canonical order of the AlpacaEval instructions is unknown (give instructions=" in note
    short = AlpacaEvalJudge(FakeEngine(), lc_data_dir=tmp_path, instructions=order[:11])
    assert "needs the 12 distinct instructions of the AlpacaEval set in canonical order" in lc_note(
        short.summarize(judgments).notes
    )
    judge = AlpacaEvalJudge(FakeEngine(), lc_data_dir=tmp_path, instructions=order)
    summary = judge.summarize(judgments[:10])
    assert summary.metrics["length_controlled_win_rate"] is None
    assert (
        "one judgment for each of the 12 AlpacaEval instructions in canonical order; 10 of them"
        in lc_note(summary.notes)
    )


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lc_is_the_package_s_own_metric_on_local_data_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the data file and the whole set, LC comes from alpaca_eval's ``get_length_controlled_winrate``.

    The expected value is the package's metric called directly on the same annotations (baseline as
    output_1, in canonical order), with its download replaced by the local file; judgments given out of
    order are put back in canonical order first.
    """
    pd = pytest.importorskip("pandas")
    glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate")
    n = 12
    write_gamed(tmp_path, n)
    judgments = lc_judgments(n)
    order = [f"instruction {i}" for i in range(n)]
    judge = AlpacaEvalJudge(FakeEngine(), lc_data_dir=tmp_path, instructions=order)
    download = glm.hf_hub_download
    summary = judge.summarize(list(reversed(judgments)))
    assert glm.hf_hub_download is download, "the package's module is left as it was"
    ours = summary.metrics["length_controlled_win_rate"]
    assert ours is not None
    assert not [note for note in summary.notes if note.startswith("length-controlled")]

    gamed = str(tmp_path / "df_gamed.csv")
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kwargs: gamed)
    annotations = pd.DataFrame(
        [
            {
                "output_1": "b" * j.details["baseline_chars"],
                "output_2": "o" * j.details["output_chars"],
                "generator_1": "gpt4_1106_preview",
                "generator_2": "my_model",
                "preference": math.nan if j.score is None else j.score,
            }
            for j in judgments
        ]
    )
    theirs = glm.get_length_controlled_winrate(annotations, save_weights_dir=None)
    assert ours == pytest.approx(theirs["length_controlled_winrate"])
    assert summary.metrics["length_controlled_standard_error"] == pytest.approx(theirs["lc_standard_error"])
    assert summary.metrics["win_rate"] == pytest.approx(theirs["win_rate"])
    assert ours != pytest.approx(summary.metrics["win_rate"])


# --- the real loopback server ---


@pytest.mark.vllm
async def test_judge_on_a_real_vllm_server(openai_server: str) -> None:
    """On a real vLLM OpenAI server, 3 items get preferences in [1, 2] or none, from 1-token top-5 requests.

    The JSON bodies the server received are recorded from the HTTP client: each asks for one token,
    temperature 1, logprobs with top_logprobs 5.
    """
    import httpx

    from aftlib.engines import OpenAIEngine

    bodies: list[dict[str, object]] = []

    async def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            bodies.append(json.loads(request.content))

    client = httpx.AsyncClient(event_hooks={"request": [record]})
    # The tiny model's context is 2048 tokens: the baseline's outputs, cut short.
    items = [EvalItem(i.id, i.turns, i.answers, (i.reference[0][:400],)) for i in baseline_items()[:3]]
    async with OpenAIEngine("tiny-served", openai_server, http_client=client) as engine:
        judge = AlpacaEvalJudge(engine)
        judgments = [await judge.judge(item) for item in items]
    await client.aclose()
    for j in judgments:
        assert j.score is None or 1.0 <= j.score <= 2.0
        assert j.details["top_logprobs"] is not None
        assert len(j.details["top_logprobs"]) <= 5
    assert len(bodies) == 3
    for body, item in zip(bodies, items, strict=True):
        assert body["max_tokens"] == 1
        assert body["temperature"] == 1.0
        assert body["logprobs"] is True
        assert body["top_logprobs"] == 5
        swap = alpaca_eval_switched(item.turns[0])
        first, second = (item.answers[0], item.reference[0]) if swap else (item.reference[0], item.answers[0])
        assert body["messages"] == expected_messages(item.turns[0], first, second)
    summary = judge.summarize(judgments)
    assert summary.n == 3
