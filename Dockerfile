# mtpx in an empty image: just the static binary (it needs no libc, no CA certificates and no
# libc resolver; it reads the /etc/resolv.conf that Docker mounts into every container).
#
#   make static                                   # target/<triple>/release/mtpx
#   docker build -t mtpx .                        # x86_64; for arm64:
#   docker build --build-arg TARGET=aarch64-unknown-linux-musl --platform linux/arm64 -t mtpx .
#   docker run -d --name mtpx -p 443:443 -v /etc/mtpx:/etc/mtpx:ro mtpx
#
# The config is read from /etc/mtpx/config.toml (bind-to should be 0.0.0.0:443 or [::]:443).
FROM scratch
ARG TARGET=x86_64-unknown-linux-musl
COPY target/${TARGET}/release/mtpx /mtpx
USER 65534:65534
EXPOSE 443
STOPSIGNAL SIGTERM
ENTRYPOINT ["/mtpx"]
CMD ["run", "/etc/mtpx/config.toml"]
