# shellcheck shell=bash
# Certificates, keys and kubeconfigs of the local cluster, made with openssl.
# Sourced by setup-local-cluster.sh after common.sh. Everything is written once into PKI_DIR
# and reused while the run directory exists; cleanup deletes it with the run directory.

CERT_DAYS=30

# new_cert NAME SUBJECT EXTENSIONS
# Writes NAME.key and NAME.crt signed by the cluster CA unless both already exist.
# EXTENSIONS is an openssl extension section body (key usage, SANs).
new_cert() {
  local name=$1 subject=$2 extensions=$3
  [[ -f "${PKI_DIR}/${name}.crt" && -f "${PKI_DIR}/${name}.key" ]] && return 0
  openssl genrsa -out "${PKI_DIR}/${name}.key" 2048 2>/dev/null
  openssl req -new -key "${PKI_DIR}/${name}.key" -subj "${subject}" -out "${PKI_DIR}/${name}.csr"
  printf '%s\n' "${extensions}" >"${PKI_DIR}/${name}.ext"
  openssl x509 -req -in "${PKI_DIR}/${name}.csr" -CA "${PKI_DIR}/ca.crt" -CAkey "${PKI_DIR}/ca.key" \
    -CAcreateserial -days "${CERT_DAYS}" -sha256 -extfile "${PKI_DIR}/${name}.ext" \
    -out "${PKI_DIR}/${name}.crt" 2>/dev/null
  rm -f "${PKI_DIR}/${name}.csr" "${PKI_DIR}/${name}.ext"
}

client_ext() {
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
}

server_ext() {
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s' "$1"
}

# write_kubeconfig FILE USER CERT_NAME SERVER
write_kubeconfig() {
  local file=$1 user=$2 cert=$3 server=$4
  umask 077
  cat >"${file}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hodei-local
  cluster:
    server: ${server}
    certificate-authority-data: $(base64 -w0 "${PKI_DIR}/ca.crt")
users:
- name: ${user}
  user:
    client-certificate-data: $(base64 -w0 "${PKI_DIR}/${cert}.crt")
    client-key-data: $(base64 -w0 "${PKI_DIR}/${cert}.key")
contexts:
- name: hodei-local
  context:
    cluster: hodei-local
    user: ${user}
    namespace: default
current-context: hodei-local
EOF
  umask 022
}

# generate_pki NODE_NAME NODE_IP
generate_pki() {
  local node=$1 node_ip=$2
  require_commands openssl base64
  mkdir -p "${PKI_DIR}"
  chmod 700 "${PKI_DIR}"

  if [[ ! -f "${PKI_DIR}/ca.crt" || ! -f "${PKI_DIR}/ca.key" ]]; then
    openssl genrsa -out "${PKI_DIR}/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "${PKI_DIR}/ca.key" -subj "/CN=hodei-local-cluster-ca" \
      -days "${CERT_DAYS}" -sha256 -out "${PKI_DIR}/ca.crt" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    info "created the cluster CA ${PKI_DIR}/ca.crt"
  fi

  # The API server is reached as localhost by the host, as the node IP by the kubelet, as the
  # `kubernetes` Service from Pods and through the CNI gateway by Pods without kube-proxy.
  new_cert apiserver "/CN=kube-apiserver" "$(server_ext "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:${node},IP:127.0.0.1,IP:${node_ip},IP:${SERVICE_API_IP},IP:${POD_GATEWAY}")"
  # The API server's identity towards the kubelet API (logs, exec): system:masters is allowed
  # by the kubelet's webhook authorization.
  new_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$(client_ext)"
  new_cert admin "/O=system:masters/CN=hodei-local-admin" "$(client_ext)"
  new_cert controller-manager "/CN=system:kube-controller-manager" "$(client_ext)"
  new_cert scheduler "/CN=system:kube-scheduler" "$(client_ext)"
  # The Node authorizer and NodeRestriction admission need exactly this identity.
  new_cert kubelet-client "/O=system:nodes/CN=system:node:${node}" "$(client_ext)"
  new_cert kubelet-server "/CN=${node}" "$(server_ext "DNS:${node},DNS:localhost,IP:127.0.0.1,IP:${node_ip}")"

  # Front proxy (aggregation layer) identity. Nothing is aggregated here, but without a
  # request-header CA the controller-manager and the scheduler log an error every few seconds.
  if [[ ! -f "${PKI_DIR}/front-proxy-ca.crt" || ! -f "${PKI_DIR}/front-proxy-ca.key" ]]; then
    openssl genrsa -out "${PKI_DIR}/front-proxy-ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "${PKI_DIR}/front-proxy-ca.key" -subj "/CN=hodei-local-front-proxy-ca" \
      -days "${CERT_DAYS}" -sha256 -out "${PKI_DIR}/front-proxy-ca.crt" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
  fi
  if [[ ! -f "${PKI_DIR}/front-proxy-client.crt" || ! -f "${PKI_DIR}/front-proxy-client.key" ]]; then
    openssl genrsa -out "${PKI_DIR}/front-proxy-client.key" 2048 2>/dev/null
    openssl req -new -key "${PKI_DIR}/front-proxy-client.key" -subj "/CN=front-proxy-client" |
      openssl x509 -req -CA "${PKI_DIR}/front-proxy-ca.crt" -CAkey "${PKI_DIR}/front-proxy-ca.key" \
        -CAcreateserial -days "${CERT_DAYS}" -sha256 -extfile <(client_ext) \
        -out "${PKI_DIR}/front-proxy-client.crt" 2>/dev/null
  fi

  if [[ ! -f "${PKI_DIR}/sa.key" ]]; then
    openssl genrsa -out "${PKI_DIR}/sa.key" 2048 2>/dev/null
    openssl rsa -in "${PKI_DIR}/sa.key" -pubout -out "${PKI_DIR}/sa.pub" 2>/dev/null
  fi
  chmod 600 "${PKI_DIR}"/*.key

  local local_server="https://127.0.0.1:${APISERVER_PORT}"
  write_kubeconfig "${KUBECONFIG_PATH}" hodei-local-admin admin "${local_server}"
  write_kubeconfig "${CONF_DIR}/controller-manager.kubeconfig" system:kube-controller-manager controller-manager "${local_server}"
  write_kubeconfig "${CONF_DIR}/scheduler.kubeconfig" system:kube-scheduler scheduler "${local_server}"
  write_kubeconfig "${CONF_DIR}/kubelet.kubeconfig" "system:node:${node}" kubelet-client "https://${node_ip}:${APISERVER_PORT}"
  info "certificates in ${PKI_DIR}; admin kubeconfig ${KUBECONFIG_PATH}"
}
