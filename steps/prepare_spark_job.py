"""PrepareFeedback's PySparkProcessor job (``smspark-submit prepare_spark_job.py --window-end ...``):
steps.prepare's arguments, run with the spark engine on the cluster's session.

A file of its own: PySparkProcessor submits a Python file (deployment copies this one to
``<store>/code/``), and this job calls ``steps.prepare``, which calls the engine in
``steps/prepare_spark.py``; kept there, the engine and the job would import each other.
"""

from __future__ import annotations

import sys
from typing import Sequence

from steps import prepare
from steps.spark_session import job_session


def main(argv: Sequence[str] | None = None) -> int:
    job_session()  # the active session the spark engine runs on
    return prepare.main([*(sys.argv[1:] if argv is None else argv), "--engine", "spark"])


if __name__ == "__main__":
    sys.exit(main())
