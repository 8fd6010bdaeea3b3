"""The retraining job as an Airflow DAG: retrain -> verify -> register -> deployment_manifest.

The Airflow equivalent of the daily cron line (README, "Retraining on a schedule"). Each task
runs the `edgefleet` CLI of an edgefleet checkout in a shell (BashOperator); this file imports
nothing of edgefleet, so it parses in Airflow's own environment (Airflow 3.3, see
deployment/airflow/requirements.txt). Copy it into the DAGs folder.

Tasks, each one `edgefleet` command run in `repo_dir`:

  retrain              edgefleet retrain ... --out <out> --out-manifest <out>.staged-deployment.json
                       (under `flock` on `lock_file`: two retrains never overlap, even with a cron
                       line left on the same host). It merges the bundle, registers it in MLflow
                       (the `champion` alias moves only when the fleet improved) and writes the
                       manifest to the staging path, all in one process as the CLI does today.
  verify               edgefleet bundle verify <out>: every file matches the bundle's manifest.
  register             edgefleet bundle registered <out>: the bundle's MLflow run registered a
                       version of `registered_model` (read-only; prints the version and the alias).
  deployment_manifest  edgefleet manifest validate <staged>, then publish it atomically to
                       `manifest`: a deployment manifest appears only for a bundle that verified
                       and is registered.

Params (per run: `airflow dags trigger edgefleet_retrain --conf '{"since": "48h"}'` or the trigger
form; per site: EDGEFLEET_RETRAIN_<NAME> in the environment of Airflow's DAG processor, e.g.
EDGEFLEET_RETRAIN_REPO_DIR=/opt/edgefleet). Relative paths are relative to `repo_dir`:

  repo_dir          /srv/edgefleet                  the checkout; every task runs here
  edgefleet         .venv/bin/edgefleet             the CLI, as shell words (e.g. `env X=1 /opt/ef/bin/edgefleet`)
  lake              out/lake                        the telemetry lake
  bundle            out/bundle                      the champion: the bundle the edge runs
  since             24h                             fresh rows since (ISO time or duration)
  out               out/bundle-next                 the merged bundle
  manifest          out/bundle-next.deployment.json the published deployment manifest
  template          deployment/deployment.template.json
  image_registry    ""                              registry prefix of the module images
  tracking_uri      sqlite:///mlflow.db             MLflow tracking and registry URI
  experiment        edgefleet                       MLflow experiment
  registered_model  edgefleet-fleet                 registry name of the bundle
  master            local[*]                        Spark master
  lock_file         out/.retrain.lock               flock file shared with any other retrain

Schedule: EDGEFLEET_RETRAIN_SCHEDULE (cron syntax, UTC; default "0 3 * * *", the cron line's),
read when the file is parsed. catchup is off (a missed day is not worth a retrain of its own: the
next run reads the rows since `since`), and max_active_runs is 1.

Exit codes and retries: the CLI exits 2 on a user or configuration error (a missing lake or
bundle, a bad flag, no fresh rows since the cutoff, a champion that does not verify): retrying
cannot help, so the task fails at once (AirflowFailException). `bundle verify` and `manifest
validate` exit 1 on a bad bundle or manifest, which a retry cannot fix either. Any other non-zero
exit (a crash, Spark or MLflow trouble, the lock held: 75) is retried: retrain once after 10
minutes (it is the expensive step), the checks twice after a minute. The tasks after retrain only
read, or rewrite one file atomically, so clearing any of them reruns it safely; clearing retrain
retrains and registers a new version.
"""

from __future__ import annotations

import os
import shlex
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException

DAG_ID = "edgefleet_retrain"
USER_ERROR_EXIT = 2  # edgefleet's exit code for a user or configuration mistake
CHECK_FAILED_EXIT = 1  # `bundle verify` / `manifest validate`: the file is bad
LOCK_HELD_EXIT = 75  # EX_TEMPFAIL: another retrain holds the lock; retried

DEFAULTS: dict[str, str] = {
    "repo_dir": "/srv/edgefleet",
    "edgefleet": ".venv/bin/edgefleet",
    "lake": "out/lake",
    "bundle": "out/bundle",
    "since": "24h",
    "out": "out/bundle-next",
    "manifest": "out/bundle-next.deployment.json",
    "template": "deployment/deployment.template.json",
    "image_registry": "",
    "tracking_uri": "sqlite:///mlflow.db",
    "experiment": "edgefleet",
    "registered_model": "edgefleet-fleet",
    "master": "local[*]",
    "lock_file": "out/.retrain.lock",
}
SCHEDULE = os.environ.get("EDGEFLEET_RETRAIN_SCHEDULE", "0 3 * * *")


def _param(name: str) -> Param:
    """Return the Param `name`, its default taken from EDGEFLEET_RETRAIN_<NAME> when set."""
    default = os.environ.get(f"EDGEFLEET_RETRAIN_{name.upper()}", DEFAULTS[name])
    return Param(default, type="string", title=name)


class EdgefleetCommand(BashOperator):
    """Run an `edgefleet` command line; exit codes that a retry cannot fix fail the task at once."""

    def __init__(self, *, final_exit_codes: frozenset[int] = frozenset({USER_ERROR_EXIT}), **kwargs: Any) -> None:
        super().__init__(skip_on_exit_code=None, **kwargs)
        self.final_exit_codes = final_exit_codes

    def execute(self, context: Any) -> str:
        """Run the rendered command in `cwd`; return its last output line."""
        if self.cwd is None or not os.path.isdir(self.cwd):
            raise AirflowFailException(f"repo_dir {self.cwd!r} is not a directory: set the DAG's repo_dir param")
        result = self.subprocess_hook.run_command(
            command=["bash", "-c", self.bash_command],
            env=self.get_env(context),
            output_encoding=self.output_encoding,
            cwd=self.cwd,
        )
        if result.exit_code in self.final_exit_codes:
            raise AirflowFailException(f"exit code {result.exit_code}: {result.output} (not retried)")
        if result.exit_code != 0:
            raise AirflowException(f"exit code {result.exit_code}: {result.output}")
        return str(result.output)


EF = "{{ params.edgefleet }}"
STAGED = "{{ (params.out ~ '.staged-deployment.json') | q }}"

RETRAIN = (
    'mkdir -p -- "$(dirname -- {{ params.lock_file | q }})" && '
    f"flock --nonblock --conflict-exit-code {LOCK_HELD_EXIT} {{{{ params.lock_file | q }}}} {EF} retrain"
    " --lake {{ params.lake | q }} --bundle {{ params.bundle | q }} --since {{ params.since | q }}"
    f" --out {{{{ params.out | q }}}} --out-manifest {STAGED}"
    " --template {{ params.template | q }} --image-registry {{ params.image_registry | q }}"
    " --tracking-uri {{ params.tracking_uri | q }} --experiment {{ params.experiment | q }}"
    " --registered-model {{ params.registered_model | q }} --master {{ params.master | q }} --quiet"
)
VERIFY = f"{EF} bundle verify {{{{ params.out | q }}}}"
REGISTER = (
    f"{EF} bundle registered {{{{ params.out | q }}}}"
    " --tracking-uri {{ params.tracking_uri | q }} --registered-model {{ params.registered_model | q }}"
)
PUBLISH = (
    f"{EF} manifest validate {STAGED}"
    f" && cp -- {STAGED} {{{{ (params.manifest ~ '.tmp') | q }}}}"
    " && mv -f -- {{ (params.manifest ~ '.tmp') | q }} {{ params.manifest | q }}"
    ' && echo "published {{ params.manifest }}"'
)

with DAG(
    dag_id=DAG_ID,
    description="Retrain drifted/new devices from the lake, verify, check the registration, publish the manifest",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    params={name: _param(name) for name in DEFAULTS},
    user_defined_filters={"q": shlex.quote},
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "execution_timeout": timedelta(minutes=15),
        "cwd": "{{ params.repo_dir }}",
        "env": {"COLUMNS": "160"},  # rich's tables unwrapped in the task log
        "append_env": True,
    },
    tags=["edgefleet"],
) as dag:
    retrain = EdgefleetCommand(
        task_id="retrain",
        bash_command=RETRAIN,
        retries=1,
        retry_delay=timedelta(minutes=10),
        execution_timeout=timedelta(hours=4),
    )
    verify = EdgefleetCommand(
        task_id="verify", bash_command=VERIFY, final_exit_codes=frozenset({USER_ERROR_EXIT, CHECK_FAILED_EXIT})
    )
    register = EdgefleetCommand(task_id="register", bash_command=REGISTER)
    deployment_manifest = EdgefleetCommand(
        task_id="deployment_manifest",
        bash_command=PUBLISH,
        final_exit_codes=frozenset({USER_ERROR_EXIT, CHECK_FAILED_EXIT}),
    )
    retrain >> verify >> register >> deployment_manifest
