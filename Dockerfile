# CPU image: installs specbench with its test tools and runs the test suite by default.
#   docker build -t specbench . && docker run --rm specbench
#   docker run --rm specbench specbench run --preset quickstart
FROM python:3.11-slim

WORKDIR /specbench
COPY . .
# torch from the CPU wheel index: the default index would pull several GB of CUDA wheels.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install --no-cache-dir -c constraints/cpu.txt -e ".[dev,hf,quant,report]" -e plugins/specbench-adaptive-k

CMD ["pytest"]
