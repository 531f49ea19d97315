"""Send the MLflow runs spooled while the tracking server was unreachable (.mlflow-spool/) to it, exactly once."""
from pipeline.tracking.stage import run_stage


def main(params, run, args):
    """Replay every spooled run to mlflow.tracking_uri (MLFLOW_TRACKING_URI wins); safe to run again."""
    from pipeline.tracking.sync import describe
    from pipeline.tracking.store import resolve_tracking_uri, sync_spool

    uri = resolve_tracking_uri(params.mlflow.tracking_uri)
    for line in describe(sync_spool(uri), uri):
        print(line)


if __name__ == "__main__":
    run_stage("sync", main, tracked=False)
