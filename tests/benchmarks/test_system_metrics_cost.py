import json

from benchmarks import system_metrics_cost


def test_system_metrics_cost_times_both_sides_and_samples_while_monitored(tmp_path):
    out = tmp_path / "cost.json"
    result = system_metrics_cost.main(["--block-s", "0.3", "--rounds", "1", "--interval", "0.05", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert len(result["images_per_s_without"]) == len(result["images_per_s_with"]) == 1
    assert result["metric_points_logged"] > 0  # the monitor really sampled during the monitored block
    assert result["median_ratio_with_over_without"] > 0 and result["one_sample_ms"] > 0
