"""Selection aggregators on FakeEngines: Select (USC, GenSelect) and BestOfN with scripted judges."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aftlib import (
    BestOfN,
    CandidateDone,
    ChatRequest,
    ConfigError,
    EngineError,
    Event,
    Layer,
    Message,
    PromptTemplate,
    Proposer,
    Result,
    SamplingParams,
    Select,
    TokenDelta,
    Topology,
)
from aftlib._select import FOLLOW_UP, parse_choice, parse_rating
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio

PROBLEM = "What is 6 * 7? Show your work."
CONVERSATION = [{"role": "user", "content": PROBLEM}]

DRAFTS = [
    "6 * 7 = 42.\n#### 42",
    "Six sevens: 7 + 7 + 7 + 7 + 7 + 7 = 41.  \n",
    "  {{ 7 * 7 }} is not the question; 6 * 7 = 42 — done.\n\n",
    "It is 43 {% if x %}.",
]
"""Four drafts, with odd spacing, a dash and template syntax that must come back untouched."""


def says(text: str, name: str) -> FakeEngine:
    """An engine whose every sample is ``text``."""
    return FakeEngine(name=name, handler=lambda request, index: text)


def proposers(drafts: list[str] = DRAFTS) -> Layer:
    """One proposer per draft, each on its own scripted engine."""
    return Layer([Proposer(says(draft, f"p{i}"), name=f"p{i}") for i, draft in enumerate(drafts)])


def scripted(*replies: str, name: str = "judge") -> FakeEngine:
    """A judge that gives ``replies`` in turn, one per request (the last one again after that)."""
    calls: list[int] = []

    def handler(request: ChatRequest, index: int) -> str:
        calls.append(1)
        return replies[min(len(calls), len(replies)) - 1]

    return FakeEngine(name=name, handler=handler)


def usc_prompt(problem: str, candidates: list[str]) -> str:
    """The USC selection prompt, written out here independently of the template."""
    listed = "".join(f"\nResponse {i + 1}: {c}\n" for i, c in enumerate(candidates))
    return (
        f"I have generated the following responses to the question: {problem}\n{listed}\n"
        "Evaluate these responses.\nSelect the most consistent response based on majority consensus.\n"
        'Start your answer with "The most consistent response is Response X" (without quotes), where X is '
        "the number of that response."
    )


def rated_answer(request: ChatRequest) -> str:
    """The candidate a scoring request shows (between the MT-Bench answer markers)."""
    text = request.messages[-1].content
    start = text.index("[The Start of Assistant's Answer]\n") + len("[The Start of Assistant's Answer]\n")
    return text[start : text.index("\n[The End of Assistant's Answer]")]


def scorer(ratings: dict[str, str], name: str = "scorer", latency: float = 0.0) -> FakeEngine:
    """A scorer that replies ``ratings[candidate]`` for the candidate each request shows."""
    return FakeEngine(name=name, handler=lambda r, i: ratings[rated_answer(r)], latency=latency)


async def run_watching(topology: Topology) -> tuple[Result, list[Event]]:
    """Run ``topology`` on the conversation and collect its events."""
    events: list[Event] = []
    result = await topology.run(CONVERSATION, on_event=events.append)
    return result, events


# --- Select --------------------------------------------------------------------------------------------


async def test_select_returns_the_chosen_candidate_byte_for_byte() -> None:
    """Select over 4 scripted drafts gives the draft the judge names, unchanged, and records the choice."""
    judge = scripted("The most consistent response is Response 3. Responses 1 and 3 agree on 42.")
    result = await Topology([proposers()], Select(judge)).run(CONVERSATION)
    assert result.text == DRAFTS[2]
    assert result.answer.agent == "select"
    assert dict(result.answer.details) == {
        "chosen": 2,
        "attempts": 1,
        "fallback": False,
        "raw": ["The most consistent response is Response 3. Responses 1 and 3 agree on 42."],
    }
    assert len(judge.requests) == 1
    assert result.answer.requests == tuple(judge.requests)


async def test_select_request_holds_the_problem_and_numbered_candidates_in_the_user_turn() -> None:
    """The USC request is one user turn: the problem, then Response 1..4 with each draft, then the ask."""
    judge = scripted("Response 1")
    await Topology([proposers()], Select(judge)).run(CONVERSATION)
    (request,) = judge.requests
    assert [m.role for m in request.messages] == ["user"]
    assert request.messages[0].content == usc_prompt(PROBLEM, DRAFTS)
    assert (request.sampling.temperature, request.sampling.n) == (0.0, 1)


async def test_genselect_template_numbers_solutions_and_reads_best_solution() -> None:
    """With template="genselect", the user turn lists Solution 1..4 and "Best solution: [[2]]" picks 2."""
    judge = scripted("Solution 2 adds wrongly, so not that. Solution 1 is sound.\nBest solution: [[1]]")
    result = await Topology([proposers()], Select(judge, template="genselect")).run(CONVERSATION)
    assert result.text == DRAFTS[0]
    content = judge.requests[0].messages[-1].content
    assert content.startswith("You will be given a problem and 4 candidate solutions to it.")
    assert f"Problem:\n{PROBLEM}\n" in content
    positions = [content.index(f"\nSolution {i + 1}:\n{draft}\n") for i, draft in enumerate(DRAFTS)]
    assert positions == sorted(positions)
    assert content.endswith('in this format: "Best solution: [[X]]", for example: "Best solution: [[1]]".')


async def test_bad_index_is_retried_once_then_the_first_candidate_is_given() -> None:
    """A reply with no index, then an out-of-range one: two requests, then the first draft, a fallback."""
    judge = scripted("They all look fine to me.", "Response 7")
    result = await Topology([proposers()], Select(judge)).run(CONVERSATION)
    assert result.text == DRAFTS[0]
    assert dict(result.answer.details) == {
        "chosen": 0,
        "attempts": 2,
        "fallback": True,
        "raw": ["They all look fine to me.", "Response 7"],
    }
    first, second = judge.requests
    assert second.messages[: len(first.messages)] == first.messages
    assert second.messages[len(first.messages) :] == [
        Message("assistant", "They all look fine to me."),
        Message("user", FOLLOW_UP.format(count=4)),
    ]
    # Usage adds up both requests.
    prompt = sum(sum(len(m.content.split()) for m in r.messages) for r in judge.requests)
    assert result.answer_usage.requests == 2
    assert result.answer_usage.prompt_tokens == prompt
    assert result.answer_usage.completion_tokens == len(["They", "all", "look", "fine", "to", "me."]) + 2
    assert result.answer.prompt_tokens == prompt


async def test_a_retry_that_names_a_valid_index_is_used() -> None:
    """A bad first reply and a bare "4" on the retry choose draft 4, with no fallback."""
    judge = scripted("Hard to say.", "4")
    result = await Topology([proposers()], Select(judge)).run(CONVERSATION)
    assert result.text == DRAFTS[3]
    assert (result.answer.details["chosen"], result.answer.details["attempts"]) == (3, 2)
    assert result.answer.details["fallback"] is False


async def test_retries_zero_falls_back_after_one_request() -> None:
    """With retries=0 a bad index falls back to the first draft at once."""
    judge = scripted("no idea")
    result = await Topology([proposers()], Select(judge, retries=0)).run(CONVERSATION)
    assert len(judge.requests) == 1
    assert result.text == DRAFTS[0]
    assert result.answer.details["fallback"] is True


async def test_a_single_candidate_is_given_without_asking() -> None:
    """One candidate: no judge request, the candidate is the answer."""
    judge = scripted("Response 1")
    result = await Topology([proposers(DRAFTS[1:2])], Select(judge)).run(CONVERSATION)
    assert judge.requests == []
    assert result.text == DRAFTS[1]
    assert result.answer.details["attempts"] == 0


async def test_select_in_a_middle_layer_feeds_the_chosen_draft_on() -> None:
    """A Select layer between proposers and a final agent passes the chosen draft to the next layer."""
    judge = scripted("[[2]]")
    final = Select(scripted("unused"), name="final")
    result = await Topology([proposers(), Layer([Select(judge)])], final).run(CONVERSATION)
    assert result.layers[1].texts == [DRAFTS[1]]
    assert result.text == DRAFTS[1]


@pytest.mark.parametrize(
    ("reply", "chosen"),
    [
        ("Response 3", 2),
        ("response #3", 2),
        ("[[3]]", 2),
        ("Best solution: 3", 2),
        ("3", 2),
        ("(3).", 2),
        ("The most consistent response is **Response 2**, since it matches 1 and 4.", 1),
        ("Response 1 says 41, Response 2 says 42. Response 2 is the most consistent.", 1),
        ("Solution 1 errs. Best solution: [[1]]... no, on reflection, Best solution: [[4]]", 3),
        ("Judgment: 1", 0),
        ("Response 1 says 41, Response 2 says 42.", None),
        ("Response 0", None),
        ("[[5]]", None),
        ("The best answer is 3", None),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_parse_choice_reads_the_documented_forms(reply: str, chosen: int | None) -> None:
    """Verdicts (the last one counts), a bare number, or one consistent mention; else a bad index."""
    assert parse_choice(reply, 4) == chosen


# --- BestOfN -------------------------------------------------------------------------------------------


async def test_best_of_n_keeps_the_highest_scored_candidate() -> None:
    """Each draft is rated in its own concurrent request; the best rated draft is given unchanged."""
    ratings = {d: f"Rating: [[{r}]]" for d, r in zip(DRAFTS, ["7", "2", "9", "3.5"], strict=True)}
    engine = scorer(ratings, latency=0.02)
    result = await Topology([proposers()], BestOfN(engine)).run(CONVERSATION)
    assert result.text == DRAFTS[2]
    assert dict(result.answer.details) == {
        "chosen": 2,
        "scores": [7.0, 2.0, 9.0, 3.5],
        "failures": [],
        "raw": [ratings[d] for d in DRAFTS],
    }
    assert sorted(rated_answer(r) for r in engine.requests) == sorted(DRAFTS)
    for request in engine.requests:
        assert PROBLEM in request.messages[-1].content
    assert engine.peak_in_flight == 4
    assert result.answer_usage.requests == 4


async def test_best_of_n_ties_go_to_the_first_in_layer_order() -> None:
    """Two drafts share the top rating; the earlier one in layer order wins."""
    ratings = dict(zip(DRAFTS, ["[[6]]", "[[8]]", "[[5]]", "[[8]]"], strict=True))
    result = await Topology([proposers()], BestOfN(scorer(ratings))).run(CONVERSATION)
    assert result.text == DRAFTS[1]
    assert result.answer.details["chosen"] == 1


async def test_best_of_n_reads_single_brackets_as_mt_bench_does() -> None:
    """With no [[x]], the first [x] is the rating."""
    ratings = dict(zip(DRAFTS, ["[4]", "[[3]] [9]", "Rating [2]", "[1] then [10]"], strict=True))
    result = await Topology([proposers()], BestOfN(scorer(ratings))).run(CONVERSATION)
    assert result.answer.details["scores"] == [4.0, 3.0, 2.0, 1.0]
    assert result.text == DRAFTS[0]


def failing_for(
    draft: str, ratings: dict[str, str], *, fail_after: float = 0, rate_after: float = 0
) -> FakeEngine:
    """A scorer whose request for ``draft`` fails after ``fail_after`` s; the rest rated from ``ratings``."""

    async def handler(request: ChatRequest, index: int) -> str:
        shown = rated_answer(request)
        if shown == draft:
            await anyio.sleep(fail_after)
            raise ConnectionError("scorer is down")
        await anyio.sleep(rate_after)
        return ratings[shown]

    return FakeEngine(name="scorer", handler=handler)


RATINGS = dict(zip(DRAFTS, ["[[5]]", "[[6]]", "[[9]]", "[[4]]"], strict=True))


async def test_a_failing_scorer_fails_best_of_n_without_min_scores() -> None:
    """min_scores=None needs every score: one failed scorer request fails the agent with its engine error."""
    engine = failing_for(DRAFTS[1], RATINGS)
    with pytest.raises(EngineError, match=r"engine 'scorer' failed: ConnectionError\('scorer is down'\)"):
        await Topology([proposers()], BestOfN(engine)).run(CONVERSATION)


async def test_a_failing_scorer_is_recorded_when_min_scores_allows() -> None:
    """min_scores=3: one failure out of 4 is recorded, and the best of the scored three wins."""
    engine = failing_for(DRAFTS[2], RATINGS)
    result = await Topology([proposers()], BestOfN(engine, min_scores=3)).run(CONVERSATION)
    assert result.text == DRAFTS[1]
    details = result.answer.details
    assert details["scores"] == [5.0, 6.0, None, 4.0]
    assert details["raw"] == ["[[5]]", "[[6]]", None, "[[4]]"]
    (failure,) = details["failures"]
    assert failure["index"] == 2
    assert failure["error"] == "EngineError: engine 'scorer' failed: ConnectionError('scorer is down')"
    assert result.answer_usage.requests == 3


async def test_too_few_scores_for_min_scores_fail_with_a_clear_error() -> None:
    """min_scores=4 with one failure: an EngineError saying how many were scored and which failed."""
    engine = failing_for(DRAFTS[3], RATINGS, fail_after=0.05)
    with pytest.raises(EngineError) as info:
        await Topology([proposers()], BestOfN(engine, min_scores=4)).run(CONVERSATION)
    assert str(info.value) == (
        "best_of_n 'best_of_n' of layer 1: 3 of 4 candidates scored, 4 needed; "
        "candidate 4: EngineError: engine 'scorer' failed: ConnectionError('scorer is down')"
    )


async def test_scoring_stops_once_the_choice_cannot_be_made() -> None:
    """A failure that leaves too few possible scores cancels the other requests, and the error says so."""
    engine = failing_for(DRAFTS[0], RATINGS, rate_after=30)
    with anyio.fail_after(5):
        with pytest.raises(EngineError) as info:
            await Topology([proposers()], BestOfN(engine, min_scores=4)).run(CONVERSATION)
    assert str(info.value).endswith(
        "0 of 4 candidates scored, 4 needed; candidate 1: EngineError: engine 'scorer' failed: "
        "ConnectionError('scorer is down'); 3 other request(s) stopped once too few could be scored"
    )
    assert engine.in_flight == 0


async def test_an_unreadable_rating_counts_as_unscored() -> None:
    """A reply without a rating is unscored: recorded with min_scores, an error without it."""
    ratings = {**RATINGS, DRAFTS[2]: "A fine answer, I would give it a nine."}
    result = await Topology([proposers()], BestOfN(scorer(ratings), min_scores=2)).run(CONVERSATION)
    assert result.text == DRAFTS[1]
    assert result.answer.details["failures"] == [
        {"index": 2, "error": "the scorer's reply holds no [[rating]]"}
    ]
    assert result.answer.details["raw"][2] == ratings[DRAFTS[2]]
    unscored = r"of 4 candidates scored, 4 needed; candidate 3: the scorer's reply holds no \[\[rating\]\]"
    with pytest.raises(EngineError, match=unscored):
        await Topology([proposers()], BestOfN(scorer(ratings))).run(CONVERSATION)


async def test_min_scores_above_the_candidates_fails_before_any_request() -> None:
    """min_scores=5 over 4 candidates is an EngineError naming both numbers, and nothing is sent."""
    engine = scorer(RATINGS)
    with pytest.raises(EngineError, match="min_scores is 5, but the layer before gave only 4 candidates"):
        await Topology([proposers()], BestOfN(engine, min_scores=5)).run(CONVERSATION)
    assert engine.requests == []


# --- Both ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "final",
    [
        lambda: Select(scripted("Let me think about all four. The most consistent response is Response 4")),
        lambda: BestOfN(scorer(dict(zip(DRAFTS, ["[[1]]", "[[2]]", "[[3]]", "[[4]]"], strict=True)))),
    ],
    ids=["select", "best_of_n"],
)
async def test_answer_deltas_concatenate_to_the_result_text(final: Any) -> None:
    """The answer's deltas are the chosen text; the judge's own tokens are never streamed as deltas."""
    result, events = await run_watching(Topology([proposers()], final()))
    assert result.text == DRAFTS[3]
    answer = [e for e in events if isinstance(e, TokenDelta) and e.is_answer]
    assert "".join(e.text for e in answer) == result.text
    final_layer = [e for e in events if isinstance(e, TokenDelta) and e.layer == 1]
    assert final_layer == answer
    done = [e.candidate for e in events if isinstance(e, CandidateDone) and e.candidate.layer == 1]
    assert done == [result.answer]


def test_settings_are_validated_with_their_key_paths() -> None:
    """N other than 1, negative retries and a min_scores below 1 (or not a number) are ConfigErrors."""
    engine = FakeEngine()
    cases: list[tuple[Any, str]] = [
        (lambda: Select(engine, sampling=SamplingParams(n=2)), "sampling.n"),
        (lambda: BestOfN(engine, sampling=SamplingParams(n=3)), "sampling.n"),
        (lambda: Select(engine, retries=-1), "retries"),
        (lambda: Select(engine, retries=True), "retries"),
        (lambda: BestOfN(engine, min_scores=0), "min_scores"),
        (lambda: BestOfN(engine, min_scores=True), "min_scores"),
        (lambda: BestOfN(engine, min_scores="2"), "min_scores"),  # type: ignore[arg-type]
    ]
    for build, path in cases:
        with pytest.raises(ConfigError) as info:
            build()
        assert info.value.path == path


def test_describe_and_generations_include_the_settings() -> None:
    """describe() names the class, template, sampling and the strategy's own setting; counts add up."""
    engine = FakeEngine(name="j")
    select = Select(engine, template="genselect", retries=2)
    best = BestOfN(engine, min_scores=3)
    assert select.describe() | {"sampling": None} == {
        "class": "Select",
        "name": "select",
        "engine": "j",
        "model": None,
        "template": "genselect",
        "sampling": None,
        "lora": None,
        "retries": 2,
    }
    assert select.describe()["sampling"]["temperature"] == 0.0
    assert best.describe()["template"] == "score_candidate"
    assert best.describe()["min_scores"] == 3
    assert Topology([proposers()], select).generations_per_query == 5
    assert Topology([proposers()], best).generations_per_query == 8
    assert (select.generations(1), best.generations(1)) == (0, 0)


def test_parse_rating_reads_double_then_single_brackets() -> None:
    """The first [[x]], else the first [x], else none."""
    assert parse_rating("Rating: [[7]] and [[3]]") == 7.0
    assert parse_rating("[2] then [[8.5]]") == 8.5
    assert parse_rating("[6]") == 6.0
    assert parse_rating("eight out of ten") is None


# --- Templates -----------------------------------------------------------------------------------------

TWO_TURNS = [
    Message("system", "Be brief."),
    Message("user", "Name a prime."),
    Message("assistant", "Seven."),
    Message("user", "And one above {{ 100 }}?"),
]


@pytest.mark.parametrize("name", ["usc_select", "genselect", "score_candidate"])
def test_templates_render_only_the_last_user_turn(name: str) -> None:
    """Each template has a user block alone: system message and earlier turns pass unchanged."""
    template = PromptTemplate(name)
    assert (template.renders_system, template.renders_user) == (False, True)
    candidates = ["101 {{ x }}", "103"]
    messages = template.messages(TWO_TURNS, candidates, candidates=candidates, candidate=candidates[0])
    assert messages[:3] == TWO_TURNS[:3]
    assert messages[3].role == "user"
    assert "And one above {{ 100 }}?" in messages[3].content  # the question is data, not source
    assert "101 {{ x }}" in messages[3].content


def test_usc_and_genselect_number_candidates_from_one() -> None:
    """USC writes "Response k: text", GenSelect "Solution k:" on its own line, k from 1."""
    conversation = [Message("user", "Q?")]
    usc = PromptTemplate("usc_select").messages(conversation, ["a", "b"], candidates=["a", "b"])
    assert usc[-1].content == usc_prompt("Q?", ["a", "b"])
    gen = PromptTemplate("genselect").messages(conversation, ["a", "b"], candidates=["a", "b"])
    assert "\n\nSolution 1:\na\n\nSolution 2:\nb\n\n" in gen[-1].content
    assert "from 1 to 2" in gen[-1].content


def test_score_candidate_is_the_mt_bench_single_answer_prompt_with_one_candidate() -> None:
    """score_candidate shows the question and one answer between the MT-Bench markers, asking [[rating]]."""
    messages = PromptTemplate("score_candidate").messages([Message("user", "Q?")], ["A."], candidate="A.")
    content = messages[-1].content
    assert content.startswith("[Instruction]\nPlease act as an impartial judge")
    assert 'strictly following this format: "[[rating]]", for example: "Rating: [[5]]".' in content
    assert content.endswith(
        "[Question]\nQ?\n\n[The Start of Assistant's Answer]\nA.\n[The End of Assistant's Answer]"
    )
