# nstage Grand Challenge algorithm container.
# Build with ./build.sh (linux/amd64). Nothing is downloaded at run time: the
# TotalSegmentator weights staging uses are fetched here, at build time, and
# verified against model/totalseg-weights.sha256.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# TotalSegmentator: weights baked into the image, config home writable at run time.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    TOTALSEG_WEIGHTS_PATH=/opt/totalseg/weights \
    TOTALSEG_HOME_DIR=/tmp/totalseg-home \
    nnUNet_raw=/tmp/nnunet_raw \
    nnUNet_preprocessed=/tmp/nnunet_preprocessed

RUN groupadd -r -g 1001 user && useradd -m --no-log-init -r -u 1001 -g user user

WORKDIR /opt/app

COPY --chown=user:user requirements.txt /opt/app/
RUN python -m pip install --no-cache-dir -r requirements.txt

COPY --chown=user:user pyproject.toml README.md /opt/app/
COPY --chown=user:user src /opt/app/src
RUN python -m pip install --no-cache-dir --no-deps /opt/app

# Weights for the TotalSegmentator tasks staging uses ("total" and its 3 mm variant),
# fetched at build time and checked against the committed checksum manifest.
ARG RECORD_CHECKSUMS=0
COPY --chown=user:user docker/fetch_totalseg_weights.py model/totalseg-weights.sha256 /opt/build/
RUN python /opt/build/fetch_totalseg_weights.py \
        --weights /opt/totalseg/weights \
        --manifest /opt/build/totalseg-weights.sha256 \
        --record "${RECORD_CHECKSUMS}" \
    && chown -R user:user /opt/totalseg

COPY --chown=user:user inference.py /opt/app/
COPY --chown=user:user resources /opt/app/resources

USER 1001:1001

ENTRYPOINT ["python", "inference.py"]
