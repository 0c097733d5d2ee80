# vipfarm image: the node agent and the operator (the chart runs both from it).
# Built with the same install script as `make` and CI, in its --runtime mode: vipfarm as a normal
# package, no test extras, no test tools, no Kubernetes binaries.
FROM debian:12-slim
ENV DEBIAN_FRONTEND=noninteractive VIPFARM_VENV=/opt/vipfarm/venv PATH=/opt/vipfarm/venv/bin:$PATH
COPY . /opt/vipfarm/src
WORKDIR /opt/vipfarm/src
# install.sh also links kernel headers for bcc; on a node, /lib/modules and /usr/src are
# mounted from the host (see charts/vipfarm/templates/agent-daemonset.yaml).
RUN bash scripts/install.sh --runtime --no-bpffs && rm -rf /var/lib/apt/lists/*
WORKDIR /
ENTRYPOINT []
CMD ["vipfarm-agent", "--help"]
