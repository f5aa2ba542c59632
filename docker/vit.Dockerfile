# ViT image classification on the official TensorFlow Serving image, with the
# SavedModel exported by `python -m services.vit.export` (models/vit-serving/hf-vit/<version>/)
# baked in. REST :8501, gRPC :8500, Prometheus at /monitoring/prometheus/metrics.
#   python -m services.vit.export <hf-checkpoint> --model-base models/vit-serving --name hf-vit
#   docker build -f docker/vit.Dockerfile -t modelserve/vit:dev .
# docker/vit.Dockerfile.dockerignore lets models/vit-serving into this build's context only.
# Server and exporter share the TF release (tensorflow==2.21.0 exports the SavedModel).
ARG BASE=tensorflow/serving:2.21.0
FROM ${BASE}

ARG SAVED_MODEL_DIR=models/vit-serving/hf-vit
COPY ${SAVED_MODEL_DIR}/ /models/hf-vit/
COPY docker/vit/batching_parameters.txt docker/vit/monitoring.config /etc/tfserving/

# The image runs as root by default; the pod enforces uid 10001 as well.
RUN groupadd --gid 10001 modelserve \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin modelserve
USER 10001:10001

# Read by the base image's /usr/bin/tf_serving_entrypoint.sh (model_base_path=/models/hf-vit).
ENV MODEL_NAME=hf-vit MODEL_BASE_PATH=/models
EXPOSE 8500 8501
# No curl/python in this image: bash's /dev/tcp asks for the model metadata, which answers
# 200 only once the servable is AVAILABLE.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8501 && printf 'GET /v1/models/hf-vit/metadata HTTP/1.0\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -q ' 200 '"]
# Appended to the entrypoint's tensorflow_model_server command line. Thread pools match
# the 4-CPU limit in k8s/base/vit (the Deployment passes the same flags explicitly).
CMD ["--enable_batching", \
     "--batching_parameters_file=/etc/tfserving/batching_parameters.txt", \
     "--enable_model_warmup", \
     "--tensorflow_intra_op_parallelism=4", \
     "--tensorflow_inter_op_parallelism=2", \
     "--monitoring_config_file=/etc/tfserving/monitoring.config"]
