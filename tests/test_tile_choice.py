"""bench/tile_choice.py turns a GPU tile sweep into the knobs the later benchmark stages run with."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from tile_choice import choose  # noqa: E402

SHAPES = [(64, 64, 32), (64, 64, 64), (5, 25, 32), (5, 25, 64)]


def _sweep(times: dict, ratios: dict | None = None) -> dict:
    """times: (rows, uv_load) -> (fwd ms, fwd+bwd ms) on every shape; ratios: cost ratio -> fwd+bwd ms."""
    rows = []
    for q, s, t in SHAPES:
        for (tile_rows, uv), (f, fb) in times.items():
            rows.append(dict(Q=q, S=s, T=t, rows=tile_rows, uv_load=uv, fwd={"time_ms": f * t}, fwd_bwd={"time_ms": fb * t}))
        for ratio, fb in (ratios or {}).items():
            rows.append(dict(Q=q, S=s, T=t, rows=64, uv_load="broadcast", bwd_cost_ratio=ratio, fwd_bwd={"time_ms": fb * t}))
    return {"rows": rows}


def test_defaults_stay_when_nothing_is_clearly_faster():
    exports, why = choose(_sweep({(64, "broadcast"): (1.0, 4.0), (64, "rows"): (1.01, 3.95),
                                  (128, "broadcast"): (0.99, 4.1), (128, "rows"): (1.0, 4.0)}, {1.25: 3.98, 2.0: 4.2}))
    assert exports == {} and len(why) == 4


def test_each_kernel_gets_the_tile_height_that_wins_its_own_time():
    # 128 rows: forward 0.7 instead of 1.0, backward (fwd+bwd - fwd) 3.7 instead of 3.0
    exports, _ = choose(_sweep({(64, "broadcast"): (1.0, 4.0), (64, "rows"): (1.2, 4.5),
                                (128, "broadcast"): (0.7, 4.4), (128, "rows"): (0.9, 5.0)}))
    assert exports == {"TAP_FAST_TILE_ROWS_FWD": "128"}


def test_row_reads_and_another_sm_split_are_taken_when_faster():
    exports, _ = choose(_sweep({(64, "broadcast"): (1.0, 4.0), (64, "rows"): (0.9, 3.6),
                                (128, "broadcast"): (0.8, 3.0), (128, "rows"): (0.95, 3.0)}, {1.25: 3.5, 2.0: 4.1}))
    # with row reads, 128 rows loses the forward (0.95 vs 0.9 ms) and wins the backward (2.05 vs 2.7)
    assert exports == {"TAP_FAST_UV_LOAD": "rows", "TAP_FAST_TILE_ROWS_BWD": "128", "TAP_FAST_BWD_COST_RATIO": "1.25"}
