#!/bin/sh
# Start the MLflow tracking server the way dutrain's infra runs it: in the container of
# infra/compose.yaml and infra/k8s/mlflow.yaml, and on a laptop through `make tracking-server`.
# Everything comes from the environment; nothing secret is written to this file or the repo.
#
#   MLFLOW_BACKEND_STORE_URI      runs/params/metrics database (required): postgresql://... on a
#                                 team server, sqlite:///mlflow.db on a laptop
#   MLFLOW_ARTIFACTS_DESTINATION  where the server stores artifacts it proxies (required):
#                                 s3://BUCKET/mlflow on a team server, ./mlartifacts on a laptop.
#                                 Clients upload through the server (--serve-artifacts), so only
#                                 the server needs S3 access (instance role / IRSA / AWS_* env).
#   MLFLOW_HOST, MLFLOW_PORT      bind address (default 127.0.0.1:5000: local only)
#   MLFLOW_WORKERS                server worker processes (default 2)
#   MLFLOW_SERVER_ALLOWED_HOSTS   Host headers accepted (DNS-rebinding guard), e.g. the Service name
#   MLFLOW_AUTH=basic             turn on MLflow's basic-auth app (users, passwords, permissions);
#                                 it then also reads:
#     MLFLOW_AUTH_DATABASE_URI      users/permissions database (default sqlite:///mlflow-auth.db)
#     MLFLOW_AUTH_ADMIN_USERNAME    first admin user (default admin)
#     MLFLOW_AUTH_ADMIN_PASSWORD    its password, used once to create it (secret)
#     MLFLOW_FLASK_SERVER_SECRET_KEY  signs sessions (secret)
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (e.g. sqlite:///mlflow.db)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (e.g. ./mlartifacts or s3://BUCKET/mlflow)}"

set -- server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-2}"
if [ -n "${MLFLOW_SERVER_ALLOWED_HOSTS:-}" ]; then
  set -- "$@" --allowed-hosts "$MLFLOW_SERVER_ALLOWED_HOSTS"
fi

case "${MLFLOW_AUTH:-none}" in
  basic)
    : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?MLFLOW_AUTH=basic needs MLFLOW_FLASK_SERVER_SECRET_KEY}"
    # The auth config file holds the users database URI (it may embed a DB password), so it is
    # written at start into a private temporary file, never into the image or the repo.
    umask 077
    auth_ini="$(mktemp -d)/basic_auth.ini"
    cat > "$auth_ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-sqlite:///mlflow-auth.db}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    export MLFLOW_AUTH_CONFIG_PATH="$auth_ini"
    set -- "$@" --app-name basic-auth
    ;;
  none) ;;
  *) echo "serve.sh: MLFLOW_AUTH must be 'basic' or 'none', got '$MLFLOW_AUTH'" >&2; exit 2 ;;
esac

exec "${MLFLOW_BIN:-mlflow}" "$@"
