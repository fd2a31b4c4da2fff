# syntax=docker/dockerfile:1
# Multi-stage build: a static baton binary on a distroless base, run as a
# non-root user. Mount your config at /etc/baton/baton.yaml; runtime
# decisions are kept on the /var/lib/baton volume.
#
#   docker build -t baton .
#   docker run --rm -p 8080:8080 -v "$PWD/baton.yaml:/etc/baton/baton.yaml:ro" \
#     -v baton-state:/var/lib/baton baton
#   docker run --rm -p 8080:8080 baton demo      # the built-in demo

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/baton ./cmd/baton \
 && /out/baton check -c config.example.yaml \
 && mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/baton /usr/local/bin/baton
COPY --from=build --chown=nonroot:nonroot /out/state /var/lib/baton
COPY config.example.yaml /etc/baton/baton.yaml
VOLUME /var/lib/baton
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/baton"]
CMD ["serve", "-c", "/etc/baton/baton.yaml", "--state-file", "/var/lib/baton/baton.state.json"]
