#!/bin/sh
# A private CA and every certificate the deployment names, for a lab or a
# first rehearsal. Production certificates come from your PKI (for example
# Vault's PKI engine) with the same names, subjects and usages.
#
#   deploy/tls/make-lab-certs.sh OUT_DIR
#
# OUT_DIR/
#   ca.crt ca.key                                  the CA (keep ca.key offline)
#   etcd-<member>.crt/.key                         member certificate: server and peer
#                                                  (install as /etc/etcd/tls/server.* and peer.*)
#   apisix-etcd-client.crt/.key                    APISIX -> etcd
#   gatehouse-cms-etcd-client.crt/.key             the CMS -> etcd (CN gatehouse-cms: reads and writes policies)
#   gatehouse-gateway-etcd-client.crt/.key         runner and decision API -> etcd (CN gatehouse-gateway: reads only)
#   gatehouse-etcd-client.crt/.key                 operators' tools -> etcd (CN gatehouse-admin: etcd's root role)
#   gatehouse.pem                                  HAProxy's frontend certificate and key
#
# Member names and addresses follow deploy/inventory.example.yaml; set
# EXTRA_SAN (e.g. "IP:127.0.0.1,DNS:localhost") to add names to every certificate.
set -eu
out=${1:?usage: make-lab-certs.sh OUT_DIR}
days=${DAYS:-825}
extra=${EXTRA_SAN:-IP:127.0.0.1,DNS:localhost}
mkdir -p "$out"
cd "$out"
umask 077

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -keyout ca.key -out ca.crt -subj "/CN=Gatehouse lab CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# issue NAME CN USAGE SAN
issue() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' "$3" "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

# Members serve clients and peers and are clients of their peers: both usages.
issue etcd-dc1 etcd-dc1 serverAuth,clientAuth "DNS:etcd-dc1.gatehouse.internal,IP:10.10.2.21,$extra"
issue etcd-dc2 etcd-dc2 serverAuth,clientAuth "DNS:etcd-dc2.gatehouse.internal,IP:10.20.2.21,$extra"
issue etcd-witness etcd-witness serverAuth,clientAuth "DNS:etcd-witness.gatehouse.internal,IP:10.30.2.21,$extra"
issue apisix-etcd-client apisix clientAuth "DNS:apisix"
# With etcd's auth on, a certificate's common name is its etcd user (deploy/etcd-auth/roles.ts).
issue gatehouse-cms-etcd-client gatehouse-cms clientAuth "DNS:gatehouse-cms"
issue gatehouse-gateway-etcd-client gatehouse-gateway clientAuth "DNS:gatehouse-gateway"
issue gatehouse-etcd-client gatehouse-admin clientAuth "DNS:gatehouse-admin"
issue frontend gatehouse.example.com serverAuth "DNS:gatehouse.example.com,$extra"
cat frontend.crt frontend.key > gatehouse.pem
rm -f frontend.crt frontend.key ca.srl
chmod 0644 ./*.crt
echo "certificates written to $out"
