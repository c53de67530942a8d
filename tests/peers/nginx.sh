#!/usr/bin/env bash
# Starts a throw-away nginx for the importer tests, in the foreground (the test harness owns
# the process and kills it when done). Everything lives under DIR: config, logs, pid, temp
# paths, and a test PKI (CA + leaf for 127.0.0.1) and htpasswd it generates on first use.
#
#   tests/peers/nginx.sh DIR WWW HTTP_PORT HTTPS_PORT
#
# Locations on both ports (WWW is the document root):
#   /files/NAME       plain static files (Range requests answered with 206)
#   /noranges/NAME    the same files with Range disabled (max_ranges 0: always 200)
#   /auth/NAME        basic auth, user "diskplane", password in DIR/password
#   /redirect/NAME    302 to /files/NAME
# Access log DIR/access.log: "$status $request_method $uri range=$http_range" per line.
# Needs: nginx (Debian nginx-light is enough), openssl.
set -euo pipefail
dir=$1 www=$2 http_port=$3 https_port=$4
mkdir -p "$dir/tmp" "$dir/tls"

if [ ! -s "$dir/tls/server.crt" ]; then
  # rustls refuses a self-signed certificate used directly as the server certificate: make
  # a CA and a leaf (CA:FALSE, SAN IP:127.0.0.1) signed by it.
  (
    cd "$dir/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=diskplane test CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' > leaf.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile leaf.ext -out server.crt 2>/dev/null
  )
fi
if [ ! -s "$dir/htpasswd" ]; then
  password=$(openssl rand -hex 12)
  printf '%s\n' "$password" > "$dir/password"
  printf 'diskplane:%s\n' "$(openssl passwd -apr1 "$password")" > "$dir/htpasswd"
fi

# Run as whoever we are; as root, nginx would switch to "nobody", who cannot read a private
# temp dir.
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root root;"

locations="
    location /files/ { alias $www/; }
    location /noranges/ { alias $www/; max_ranges 0; }
    location /auth/ { alias $www/; auth_basic \"diskplane\"; auth_basic_user_file $dir/htpasswd; }
    location ~ ^/redirect/(.*)\$ { return 302 /files/\$1; }
"
cat > "$dir/nginx.conf" <<CONF
$user_line
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 256; }
http {
    log_format ranges '\$status \$request_method \$uri range=\$http_range';
    access_log $dir/access.log ranges;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {
        listen 127.0.0.1:$http_port;
        $locations
    }
    server {
        listen 127.0.0.1:$https_port ssl;
        ssl_certificate $dir/tls/server.crt;
        ssl_certificate_key $dir/tls/server.key;
        $locations
    }
}
CONF
exec nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
