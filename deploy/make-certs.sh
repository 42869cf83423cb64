#!/usr/bin/env bash
# Makes a private CA and one server certificate for every rlfleet service: deploy/make-certs.sh OUT_DIR [NAME...]
#
# OUT_DIR gets ca.pem (give it to clients: client.tls_ca_file), ca-key.pem (keep it offline; it signs
# more certificates), server.pem and server-key.pem (server.tls.cert_file / key_file). The server
# certificate names generator, reward, env, reference, learner (their compose names and Kubernetes
# Service names, short and namespaced), localhost (health checks inside a container) and any extra NAMEs.
# Clients verify the service's name, also for the replicas of dns:///generator:50051 they reach by IP.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUT_DIR [EXTRA_DNS_NAME...]" >&2
    exit 2
fi
out=$1
shift
namespace=${RLFLEET_NAMESPACE:-rlfleet}
days=${RLFLEET_CERT_DAYS:-365}
mkdir -p "$out"

names=(localhost)
for service in generator reward env reference learner; do
    names+=("$service" "$service.$namespace" "$service.$namespace.svc" "$service.$namespace.svc.cluster.local")
done
names+=("$@")
san=$(printf 'DNS:%s,' "${names[@]}")
san=${san%,}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=rlfleet CA" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
    -keyout "$out/ca-key.pem" -out "$out/ca.pem"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=rlfleet" \
    -keyout "$out/server-key.pem" -out "$out/server.csr"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -CAcreateserial \
    -days "$days" -out "$out/server.pem" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$san")
rm -f "$out/server.csr" "$out/ca.srl"
chmod 600 "$out/ca-key.pem"
# The containers run as uid 10001: it must read the server key (a bind mount keeps the host's owner).
chmod 640 "$out/server-key.pem"
if [[ $(id -u) == 0 ]]; then
    chown 10001 "$out/server-key.pem"
fi
echo "wrote $out/{ca.pem,ca-key.pem,server.pem,server-key.pem} for: ${names[*]}"
