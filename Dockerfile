FROM python:3.11-slim
WORKDIR /opt/rag_pipeline
COPY setup.py README.md ./
COPY rag_pipeline ./rag_pipeline
RUN pip install --no-cache-dir .
ENV DAGSTER_HOME=/opt/dagster/home
RUN mkdir -p $DAGSTER_HOME
COPY dagster.yaml $DAGSTER_HOME/dagster.yaml
COPY docker/workspace.yaml /opt/dagster/workspace.yaml
