# CPU image: build in a Rust image, run in a slim Debian with only the binary, ONNX Runtime
# and the default config. ONNX Runtime comes from its official PyPI wheel through the same
# script the developers and CI use.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/fetch-onnxruntime --dest /out/lib \
    && cargo build --locked --release \
    && install -D target/release/embedserve /out/bin/embedserve

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /data embedserve
COPY --from=build /out/bin/embedserve /usr/local/bin/embedserve
COPY --from=build /out/lib/ /opt/onnxruntime/
COPY config/embedserve.toml /etc/embedserve/embedserve.toml
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so \
    EMBEDSERVE_HOST=0.0.0.0 \
    EMBEDSERVE_PORT=8080 \
    EMBEDSERVE_CONFIG=/etc/embedserve/embedserve.toml \
    HF_HOME=/data/huggingface
USER embedserve
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["embedserve"]
CMD ["serve"]
