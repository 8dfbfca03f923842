FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY . .
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["sh", "-c", "external-agents migrate && external-agents serve --host 0.0.0.0 --port 8000"]
