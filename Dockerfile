# embedserve image. CPU by default; the CUDA variant with --build-arg VARIANT=cuda:
#   docker build -t embedserve .
#   docker build -t embedserve:cuda --build-arg VARIANT=cuda .   (run with --gpus all)
# The build runs the same scripts as the developers and CI: scripts/fetch-onnxruntime
# (official wheels from PyPI; --gpu adds the CUDA and cuDNN libraries, so the runtime image
# needs no CUDA install, only the driver from the NVIDIA container toolkit) and a locked
# release build.
# The bases are the usual public images; BUILD_IMAGE and RUNTIME_IMAGE replace them where no
# registry is reachable (scripts/test-image makes both from Debian packages).
ARG VARIANT=cpu
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG VARIANT
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN if [ "$VARIANT" = cuda ]; then scripts/fetch-onnxruntime --gpu --dest /out/lib; \
    else scripts/fetch-onnxruntime --dest /out/lib; fi \
    && cargo build --locked --release \
    && install -D target/release/embedserve /out/bin/embedserve

FROM ${RUNTIME_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 embedserve \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /data --shell /usr/sbin/nologin embedserve
COPY --from=build /out/bin/embedserve /usr/local/bin/embedserve
COPY --from=build /out/lib/ /opt/onnxruntime/
COPY config/embedserve.toml /etc/embedserve/embedserve.toml
# device auto: the CUDA image uses the GPU when one is given to the container, and both
# images fall back to the CPU (and log it) when there is none.
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so \
    EMBEDSERVE_HOST=0.0.0.0 \
    EMBEDSERVE_PORT=8080 \
    EMBEDSERVE_DEVICE=auto \
    EMBEDSERVE_CONFIG=/etc/embedserve/embedserve.toml \
    HF_HOME=/data/huggingface
# Numeric, so that Kubernetes' runAsNonRoot can verify it (deploy/kubernetes runs as 10001).
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD curl -fsS "http://127.0.0.1:${EMBEDSERVE_PORT}/health" || exit 1
ENTRYPOINT ["embedserve"]
CMD ["serve"]
