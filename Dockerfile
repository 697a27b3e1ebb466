FROM python:3.11-slim
WORKDIR /opt/rag_pipeline
# OCR of scans and images (RAG_OCR=auto); add tesseract-ocr-<lang> for RAG_OCR_LANGUAGES.
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng \
    && rm -rf /var/lib/apt/lists/*
COPY setup.py README.md ./
COPY rag_pipeline ./rag_pipeline
# The celery extra lets the same image serve as a Celery worker (RAG_EXECUTOR=celery).
RUN pip install --no-cache-dir ".[celery]"
ENV DAGSTER_HOME=/opt/dagster/home
# Dagster's switch for storing a step's events in batches (one insert per 1,000 materializations
# instead of one each); Dagster reads it only from the environment. See dagster.yaml.
ENV DAGSTER_EVENT_BATCH_SIZE=1000
RUN mkdir -p $DAGSTER_HOME
COPY dagster.yaml $DAGSTER_HOME/dagster.yaml
COPY docker/workspace.yaml /opt/dagster/workspace.yaml
