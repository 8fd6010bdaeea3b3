"""The generation core: deterministic, on contract, and every fault does what it says at its rate."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgefleet.messages import MessageError, decode_payload
from simulator.stream import FAULT_TYPES, Emission, TelemetryStream, generate
from tests.simulator.conftest import decode, profile

ALL_FAULTS = {
    "stuck_rate": 0.02,
    "spike_rate": 0.02,
    "nan_rate": 0.02,
    "missing_feature_rate": 0.02,
    "duplicate_rate": 0.02,
    "reorder_rate": 0.02,
    "burst_rate": 0.02,
    "silent_device_rate": 0.25,
    "silent_duration_s": 2.0,
}
START = datetime(2026, 11, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def digest(emissions: list[Emission]) -> str:
    """Return a fingerprint of everything the determinism contract covers."""
    text = "\n".join(repr((e.device_id, e.seq, e.payload, e.faults, e.duplicate, e.offset_s)) for e in emissions)
    return hashlib.sha256(text.encode()).hexdigest()


def by_key(emissions: list[Emission]) -> dict[tuple[str, int], dict[str, Any]]:
    """Return each reading's decoded message by (device_id, seq), originals only."""
    return {(e.device_id, e.seq): decode(e.payload) for e in emissions if not e.duplicate}


def device_order(emissions: list[Emission]) -> dict[str, list[Emission]]:
    """Return each device's emissions in send order."""
    order: dict[str, list[Emission]] = defaultdict(list)
    for emission in emissions:
        order[emission.device_id].append(emission)
    return order


def test_the_same_seed_and_profile_give_an_identical_stream():
    fleet = profile(faults=ALL_FAULTS, duration_s=5.0)
    first, second = list(generate(fleet)), list(generate(fleet))
    assert len(first) > 900 and first == second
    other = list(generate(profile(faults=ALL_FAULTS, duration_s=5.0, seed=4)))
    assert digest(other) != digest(first)


def test_the_stream_is_the_same_in_another_process_with_another_hash_seed():
    fleet = profile(faults=ALL_FAULTS, duration_s=3.0)
    code = (
        "from tests.simulator.test_stream import ALL_FAULTS, digest\n"
        "from tests.simulator.conftest import profile\n"
        "from simulator.stream import generate\n"
        "print(digest(list(generate(profile(faults=ALL_FAULTS, duration_s=3.0)))))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=True
    )
    assert run.stdout.strip() == digest(list(generate(fleet)))


def test_every_message_is_a_telemetry_reading_or_a_nan_the_edge_dead_letters():
    emissions = list(generate(profile(faults=ALL_FAULTS, duration_s=5.0)))
    for emission in emissions:
        assert emission.topic == f"fleet/{emission.device_id}/telemetry"
        if not emission.valid:
            with pytest.raises(MessageError) as caught:
                decode_payload(emission.payload)
            assert caught.value.reason == "non_finite"
            continue
        readings, errors = decode_payload(emission.payload)
        assert not errors
        (reading,) = readings
        assert (reading.device_id, reading.seq) == (emission.device_id, emission.seq)
        assert reading.label is not None
        assert len(reading.features) == (4 if emission.complete else 3)
    assert {e.valid for e in emissions} == {True, False} and {e.complete for e in emissions} == {True, False}


def test_a_reading_is_stamped_with_its_scheduled_time_and_rounded_to_four_digits():
    emissions = list(generate(profile(duration_s=1.0)))
    for emission in emissions:
        obj = decode(emission.payload)
        assert obj["ts"].endswith("Z")
        ts = datetime.fromisoformat(obj["ts"])
        assert abs((ts - START).total_seconds() - emission.offset_s) < 0.001
        for value in [*obj["features"].values(), obj["label"]]:
            assert float(f"{value:.4g}") == value
        assert len(emission.payload) < 260  # compact: many readings fit one 4 KB IoT Hub unit


def test_seqs_count_from_zero_and_every_seq_is_sent_or_withheld_exactly_once():
    stream = TelemetryStream.from_profile(profile(faults=ALL_FAULTS, duration_s=5.0))
    emissions = list(stream)
    sent = Counter((e.device_id, e.seq) for e in emissions if not e.duplicate)
    assert max(sent.values()) == 1
    for stats in stream.device_stats():
        seqs = {seq for device_id, seq in sent if device_id == stats.device_id}
        assert len(seqs) + stats.withheld == stats.generated
        withheld = set(range(stats.generated)) - seqs
        if withheld:  # one silent stretch: the edge sees a gap in the seqs
            assert max(withheld) - min(withheld) + 1 == len(withheld) == stats.withheld


def test_each_fault_type_appears_at_its_configured_rate():
    fleet = profile(
        faults=ALL_FAULTS, duration_s=10.0, device_types=[{"name": "unit", "count": 200, "rate_per_s": 10.0}]
    )
    stream = TelemetryStream.from_profile(fleet)
    emissions = list(stream)
    totals = stream.fault_totals()
    stats = stream.device_stats()
    readings = sum(s.generated - s.withheld for s in stats)
    for fault in FAULT_TYPES:
        if fault == "silent":
            expected, n = ALL_FAULTS["silent_device_rate"] * len(stats), len(stats)
            sd = math.sqrt(n * 0.25 * 0.75)
        else:
            expected = ALL_FAULTS[f"{fault}_rate"] * readings
            sd = math.sqrt(expected)
        # Reorder and burst cannot start while a burst is being collected: a few percent fewer.
        assert abs(totals[fault] - expected) <= 5 * sd + 0.1 * expected, (fault, totals[fault], expected)
    tagged = Counter(fault for e in emissions if not e.duplicate for fault in e.faults)
    assert tagged == {fault: count for fault, count in totals.items() if fault != "silent"}
    assert sum(e.duplicate for e in emissions) == totals["duplicate"]
    assert sum(not e.valid and not e.duplicate for e in emissions) == totals["nan"]


def value_fault_pairs(**faults: Any) -> tuple[list[Emission], dict[tuple[str, int], dict[str, Any]]]:
    """Return a stream with these faults and the same fleet's clean messages, at full float precision."""
    common: dict[str, Any] = {"duration_s": 10.0, "precision_digits": 17}
    faulty = list(generate(profile(faults=faults, **common)))
    return faulty, by_key(list(generate(profile(**common))))


def test_a_spike_multiplies_one_feature_and_changes_nothing_else():
    faulty, clean = value_fault_pairs(spike_rate=0.05, spike_factor=10.0)
    spiked = 0
    for emission in faulty:
        obj, truth = decode(emission.payload), clean[(emission.device_id, emission.seq)]
        assert (obj["label"], obj["ts"]) == (truth["label"], truth["ts"])
        changed = {name for name, value in obj["features"].items() if value != truth["features"][name]}
        if "spike" in emission.faults:
            (name,) = changed
            assert obj["features"][name] == truth["features"][name] * 10.0
            spiked += 1
        else:
            assert not changed
    assert spiked > 50


def test_a_nan_or_missing_feature_hits_one_feature():
    faulty, clean = value_fault_pairs(nan_rate=0.05, missing_feature_rate=0.05)
    for emission in faulty:
        obj, truth = decode(emission.payload), clean[(emission.device_id, emission.seq)]
        nans = [name for name, value in obj["features"].items() if value != value]
        absent = set(truth["features"]) - set(obj["features"])
        assert len(nans) == ("nan" in emission.faults) and emission.valid == (not nans)
        assert len(absent) == ("missing_feature" in emission.faults) and emission.complete == (not absent)
        assert not set(nans) & absent  # leaving out the NaN feature would hide the NaN
        kept = {name: value for name, value in obj["features"].items() if name not in nans}
        assert kept == {name: value for name, value in truth["features"].items() if name in kept}


def test_a_stuck_feature_repeats_the_previous_value_for_stuck_readings():
    faulty, clean = value_fault_pairs(stuck_rate=0.02, stuck_readings=5)
    episodes = 0
    for device_id, emissions in device_order(faulty).items():
        stuck_until, stuck_name, stuck_value = -1, "", 0.0
        for emission in emissions:
            obj, seq = decode(emission.payload), emission.seq
            truth = clean[(device_id, seq)]
            if "stuck" in emission.faults:
                episodes += 1
                previous = clean.get((device_id, seq - 1), truth)["features"]
                (stuck_name,) = [n for n, v in obj["features"].items() if v == previous[n]] or ["?"]
                stuck_value, stuck_until = previous[stuck_name], seq + 4
            if seq <= stuck_until:
                assert obj["features"][stuck_name] == stuck_value
                assert all(v == truth["features"][n] for n, v in obj["features"].items() if n != stuck_name)
            else:
                assert obj == truth
    assert episodes > 10


def test_a_duplicate_follows_its_original_with_the_same_bytes():
    emissions = list(generate(profile(faults={"duplicate_rate": 0.05}, duration_s=5.0)))
    duplicates = [i for i, e in enumerate(emissions) if e.duplicate]
    assert len(duplicates) > 10
    for i in duplicates:
        original = emissions[i - 1]
        assert not original.duplicate and "duplicate" in original.faults
        assert (original.device_id, original.seq, original.payload) == (
            emissions[i].device_id,
            emissions[i].seq,
            emissions[i].payload,
        )


def test_a_reordered_reading_is_sent_right_after_the_devices_next_one():
    emissions = list(generate(profile(faults={"reorder_rate": 0.05}, duration_s=5.0)))
    swaps = 0
    for device_emissions in device_order(emissions).values():
        seqs = [e.seq for e in device_emissions]
        assert sorted(seqs) == list(range(len(seqs)))
        for index, emission in enumerate(device_emissions):
            if "reorder" in emission.faults and emission.seq < len(seqs) - 1:  # the last one has no successor
                swaps += 1
                assert emission.seq > 0 and seqs[index - 1] == emission.seq + 1
    assert swaps > 10


def test_a_burst_sends_burst_readings_at_once_when_the_last_is_taken():
    emissions = list(generate(profile(faults={"burst_rate": 0.05, "burst_readings": 4}, duration_s=5.0)))
    bursts = 0
    for device_emissions in device_order(emissions).values():
        assert [e.seq for e in device_emissions] == list(range(len(device_emissions)))
        for index, emission in enumerate(device_emissions):
            group = device_emissions[index : index + 4]
            if "burst" in emission.faults and len(group) == 4:
                bursts += 1
                assert len({e.offset_s for e in group}) == 1
                ts = datetime.fromisoformat(decode(group[-1].payload)["ts"])
                assert abs((ts - START).total_seconds() - emission.offset_s) < 0.001  # sent when the last is read
    assert bursts > 10


def test_a_stopped_stream_hands_over_what_devices_still_hold():
    stream = TelemetryStream.from_profile(profile(faults={"burst_rate": 0.2, "reorder_rate": 0.2}, duration_s=5.0))
    iterator = iter(stream)
    taken = [next(iterator) for _ in range(300)]
    handed_over = taken + stream.flush()
    seqs = Counter(e.device_id for e in handed_over if not e.duplicate)
    for stats in stream.device_stats():
        assert seqs[stats.device_id] == stats.generated - stats.withheld


def test_the_rate_cap_scales_every_device_down_proportionally():
    fleet = profile(rate_cap_per_s=50.0, duration_s=4.0)
    stream = TelemetryStream.from_profile(fleet)
    assert stream.plan.rate_scale == pytest.approx(0.25) and stream.plan.rate_per_s == pytest.approx(50.0)
    assert len(list(stream)) == pytest.approx(200, abs=20)


def test_a_device_type_sends_only_the_features_it_measures():
    fleet = profile(
        device_types=[
            {"name": "full", "count": 2, "rate_per_s": 5.0},
            {"name": "fan", "count": 2, "rate_per_s": 5.0, "features": ["load_pct", "temperature_c"]},
        ]
    )
    for emission in generate(fleet):
        names = list(decode(emission.payload)["features"])
        if emission.device_id in ("dev-00002", "dev-00003"):
            assert names == ["load_pct", "temperature_c"] and not emission.complete
        else:
            assert len(names) == 4 and emission.complete
