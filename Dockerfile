# The lockd service image: `lockd serve` over HTTPS on port 8080, as a non-root user, data in
# /var/lib/lockd. The certificate and key come from /etc/lockd/tls/tls.crt and tls.key (mount
# them, readable by uid 10001; deploy/kubernetes/README.md has the openssl steps): without them
# the service refuses to start, naming the files. For the admission webhook's own listener add
# --admission-port 8443 --client-ca FILE (deploy/kubernetes/lockd.yaml).
#
# Built without the network: lockd and its dependencies come from a folder of wheels in the
# build context (WHEELS, default build/wheels), installed with --require-hashes from the lock
# locks/lockd/requirements.txt. Fill the folder first (for the base image's Python X.Y):
#
#   pip download --require-hashes --no-deps --only-binary=:all: --implementation cp \
#       --python-version X.Y --platform manylinux_2_28_x86_64 \
#       -r locks/lockd/requirements.txt -d build/wheels
#   pip wheel --no-deps -w build/wheels .
#   docker build --build-arg BASE_IMAGE=lockd/base:bookworm -t lockd/service .
#
# BASE_IMAGE needs python3 with the venv module (Debian: python3-venv); it needs no pip.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ARG WHEELS=build/wheels
RUN python3 -m venv /opt/lockd
COPY locks/lockd/requirements.txt /tmp/lockd/requirements.txt
COPY ${WHEELS}/ /tmp/lockd/wheels/
RUN /opt/lockd/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
        --no-index --find-links /tmp/lockd/wheels \
        --require-hashes --only-binary=:all: -r /tmp/lockd/requirements.txt \
    && /opt/lockd/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
        --no-index --no-deps /tmp/lockd/wheels/lockd-*.whl \
    && /opt/lockd/bin/python -m pip uninstall --yes --disable-pip-version-check pip \
    && /opt/lockd/bin/python -m compileall -q /opt/lockd >/dev/null

FROM ${BASE_IMAGE}
COPY --from=build /opt/lockd /opt/lockd
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/lockd --create-home \
        --shell /usr/sbin/nologin lockd
ENV PATH=/opt/lockd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    LOCKD_DATABASE_URL=sqlite:////var/lib/lockd/lockd.db \
    LOCKD_TLS_CERT=/etc/lockd/tls/tls.crt \
    LOCKD_TLS_KEY=/etc/lockd/tls/tls.key
USER lockd
WORKDIR /var/lib/lockd
VOLUME /var/lib/lockd
EXPOSE 8080
# The container's own loopback: the certificate names the service, not 127.0.0.1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/lockd/bin/python", "-c", "import ssl, urllib.request; urllib.request.urlopen('https://127.0.0.1:8080/healthz', timeout=4, context=ssl._create_unverified_context())"]
ENTRYPOINT ["/opt/lockd/bin/lockd", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
