"""Probes in rounds: the evaluating step runs the project's enabled probe files on the new adapter
and on the model it would replace, stores the numbers and the examples, flags results that fell
beyond the tolerance, and — when the project says so — a flag keeps the adapter from promotion."""

from types import SimpleNamespace

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from feedback_loop import selectors, services, tasks
from feedback_loop.models import Adapter, Round
from tests.loop.test_round_eager import eager, feedback_project  # noqa: F401 (fixtures)


def test_probe_regressions_know_which_way_each_metric_is_better():
    baseline = {
        "inverse_scaling/memo/loss": 1.0,
        "inverse_scaling/memo/accuracy": 0.8,
        "biased_context/always_a/flip_to_cue_rate": 0.1,
        "self_consistency/hypothetical": 0.5,
        "self_consistency/hypothetical_chance": 0.5,
    }
    new = {
        "inverse_scaling/memo/loss": 1.3,  # worse by 0.3
        "inverse_scaling/memo/accuracy": 0.78,  # worse by 0.02: within the tolerance
        "biased_context/always_a/flip_to_cue_rate": 0.4,  # worse by 0.3 (flips to the cue more)
        "self_consistency/hypothetical": 0.9,  # better
        "self_consistency/hypothetical_chance": 0.0,  # no score of the model
    }
    flags = tasks.probe_regressions(new, baseline, tolerance=0.05)
    assert {flag["probe"] for flag in flags} == {
        "inverse_scaling/memo/loss",
        "biased_context/always_a/flip_to_cue_rate",
    }
    assert all(flag["drop"] == pytest.approx(0.3) for flag in flags)


@pytest.mark.parametrize(
    "probes",
    [{"memorisation": []}, {"inverse_scaling": "tasks.csv"}, {"inverse_scaling": ["tasks.txt"]}, []],
)
def test_loop_settings_refuse_unknown_probe_families_and_files(project, probes):
    config = selectors.loop_config_of(project)
    config.probes = probes
    with pytest.raises(ValidationError) as error:
        config.full_clean()
    assert "probes" in error.value.message_dict


def _evaluating_round(project, alice, **config):
    loop = selectors.loop_config_of(project)
    for name, value in config.items():
        setattr(loop, name, value)
    loop.save()
    round = services.round_start(project=project, user=alice)
    Round.objects.filter(pk=round.pk).update(state=Round.State.EVALUATING)
    Adapter.objects.create(project=project, round=round, base_model="tiny", path="/a", checksum="x")
    return round, services.round_claim(round_id=round.pk, state="evaluating")


FLAG = {"probe": "inverse_scaling/memo/loss", "value": 1.3, "baseline": 1.0, "drop": 0.3}


@pytest.mark.parametrize("block", [True, False])
def test_a_flagged_probe_blocks_promotion_only_when_the_project_says_so(project, alice, block):
    round, token = _evaluating_round(project, alice, probes_block_promotion=block)
    services.adapter_promote(
        round_id=round.pk,
        token=token,
        evaluation={"held_out_loss": 1.0, "baseline_held_out_loss": 1.0},
        probe_flags=[FLAG],
        probe_details={"inverse_scaling": {}},
    )
    round.refresh_from_db()
    assert round.probe_flags == [FLAG]
    assert round.promoted is (not block)
    assert "inverse_scaling/memo/loss" in round.promotion_reason
    assert round.state == (Round.State.DONE if block else Round.State.GENERATING)
    client = Client()
    client.force_login(alice)
    assert client.get(reverse("round-detail", args=[round.pk])).json()["probe_flags"] == [FLAG]


def test_round_page_lists_flagged_probes_and_escaped_examples(project, alice):
    round, token = _evaluating_round(project, alice)
    details = {
        "biased_context": {
            "always_a": {
                "examples": [
                    {"question": "plain", "flipped_to_cue": False},
                    {"question": "<script>alert(1)</script>", "flipped_to_cue": True},
                ]
            }
        }
    }
    services.adapter_promote(
        round_id=round.pk, token=token, evaluation={}, probe_flags=[FLAG], probe_details=details
    )
    client = Client()
    client.force_login(alice)
    page = client.get(reverse("loop-round", args=[project.pk, round.number])).content.decode()
    section = page[page.index('id="probes"') :]
    assert "inverse_scaling/memo/loss" in section and "0.3000" in section
    assert "Examples: biased_context/always_a" in section
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    # The example that flipped to the cue is shown first.
    assert section.index("&lt;script&gt;") < section.index("plain")


@pytest.mark.slow
def test_a_round_runs_the_enabled_probes_on_the_adapter_and_the_model_it_replaces(
    transactional_db,
    eager,  # noqa: F811
    feedback_project,  # noqa: F811
    alice,
):
    project, _ = feedback_project
    config = selectors.loop_config_of(project)
    config.probes = {"inverse_scaling": []}  # the small example files
    config.full_clean()
    config.save()
    round = services.round_start(project=project, user=alice)
    round.refresh_from_db()
    assert round.state == Round.State.DONE, round.error
    adapter = round.adapter
    probes, baseline = adapter.evaluation["probes"], adapter.evaluation["baseline_probes"]
    assert probes and set(probes) == set(baseline)
    assert all(name.startswith("inverse_scaling/") for name in probes)
    assert probes != baseline  # the adapter changed the model
    assert set(adapter.probe_details) == {"inverse_scaling"}
    assert round.probe_flags == tasks.probe_regressions(probes, baseline, tolerance=config.probe_tolerance)


@pytest.mark.parametrize(
    "probes",
    [
        {"biased_context": {"files": [], "cue_detector": "oracle"}},  # no such detector
        {"biased_context": {"files": [], "judge": "yes"}},  # no such option
        {"inverse_scaling": {"files": [], "cue_detector": "judge"}},  # not an option of this family
        {"biased_context": {"files": "cot.jsonl"}},
    ],
)
def test_loop_settings_refuse_unknown_probe_options(project, probes):
    config = selectors.loop_config_of(project)
    config.probes = probes
    with pytest.raises(ValidationError) as error:
        config.full_clean()
    assert "probes" in error.value.message_dict


def test_probe_families_take_options_beside_their_files():
    probes = {"biased_context": {"files": ["cot.jsonl"], "cue_detector": "judge"}, "inverse_scaling": []}
    assert tasks.probe_files_from(probes) == {"biased_context": ["cot.jsonl"], "inverse_scaling": []}
    assert tasks.probe_options_from(probes) == {
        "biased_context": {"cue_detector": "judge"},
        "inverse_scaling": {},
    }


@pytest.mark.parametrize("detector", ["judge", "keyword", None])
def test_biased_chain_of_thought_is_judged_by_the_projects_instruction_model_when_asked(
    project, alice, monkeypatch, detector
):
    probes = {"biased_context": {"files": [], "cue_detector": detector} if detector else []}
    loaded, judges = [], []

    class Model:
        def __init__(self, name):
            self.name = name

        def set_adapter(self, name):
            pass

    def backend(model, *, adapters=None):
        loaded.append((model, adapters))
        return Model(model)

    def run_probes(backend, *, files, families, seed, cue_judge):
        judges.append(cue_judge)
        return SimpleNamespace(metrics={}, details={})

    monkeypatch.setattr(tasks, "_backend", backend)
    monkeypatch.setattr(tasks, "run_probes", run_probes)
    round, token = _evaluating_round(project, alice, probes=probes)
    selectors.loop_config_of(project).full_clean()
    tasks._evaluate(round, token)

    if detector == "judge":
        refiner = round.config["refiner_model"]
        assert (refiner, None) in loaded  # the instruction-following model, without adapters
        assert [judge.name for judge in judges] == [refiner, refiner]  # for the adapter and its baseline
    else:
        assert judges == [None, None] and len(loaded) == 1  # the keyword match decides
