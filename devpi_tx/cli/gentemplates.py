"""
The text of the files C{devpi-tx gen-config} writes (L{devpi_tx.cli.genconfig}
fills them in), with C{%(name)s} fields: nginx, systemd, supervisor and
logrotate never use C{%(} themselves, and nginx's C{$variables} and braces
stay as they are.
"""

NGINX = """\
# nginx site for devpi-tx, made by `devpi-tx gen-config` for %(serverdir)s.
# Install: copy to /etc/nginx/sites-available/ and link it from sites-enabled/ (or to
# /etc/nginx/conf.d/), then: nginx -t && systemctl reload nginx
# Files (+f/) are proxied too: see deployment/README.rst of devpi-tx.

upstream %(upstream)s {
    server %(backend)s;
    keepalive 16;
}
%(redirect)s
server {
    listen %(port)s%(ssl)s;
    listen [::]:%(port)s%(ssl)s;
    server_name %(server_name)s;
%(tls)s
    # Uploads as large as the server takes (--max-request-body-size), streamed to it as
    # they arrive: it checks the uploader's rights before it reads the file.
    client_max_body_size %(body_size)s;
    client_body_timeout 60s;
    proxy_request_buffering off;

    # Simple pages and JSON compress well; files are compressed already.
    gzip on;
    gzip_proxied any;
    gzip_vary on;
    gzip_min_length 1000;
    gzip_types application/json application/vnd.pypi.simple.v1+json
               application/vnd.pypi.simple.v1+html text/plain;

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    # The URL clients reach the server under, for the links it makes.
    proxy_set_header X-Outside-Url %(outside_url)s;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_connect_timeout 10s;
    proxy_send_timeout 60s;
    # Above how long a replica waits for its primary on a write (--proxy-timeout).
    proxy_read_timeout %(read_timeout)ss;
%(prefix_redirect)s
    location %(prefix)s/ {
%(rewrite)s        proxy_pass %(scheme)s://%(upstream)s;
    }

    # A replica's changelog stream: sent on as it is written, held open for 30 s
    # while it waits for the next commit.
    location ^~ %(prefix)s/+changelog/ {
%(rewrite)s        proxy_pass %(scheme)s://%(upstream)s;
        proxy_buffering off;
        proxy_read_timeout %(changelog_timeout)ss;
    }

    # Files: passed on as they come (a mirrored file streams while it downloads),
    # never spooled to nginx's disk.
    location ~ ^%(regex_prefix)s/[^/]+/[^/]+/\\+[fe]/ {
%(rewrite)s        proxy_pass %(scheme)s://%(upstream)s;
        proxy_max_temp_file_size 0;
    }
}
"""


NGINX_REDIRECT = """
server {
    listen 80;
    listen [::]:80;
    server_name %(server_name)s;
    return 301 https://$host$request_uri;
}
"""


NGINX_TLS = """
    ssl_certificate %(certificate)s;
    ssl_certificate_key %(certificate_key)s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:%(zone)s:10m;
    ssl_session_timeout 1d;
"""


SERVICE = """\
# systemd service for devpi-tx, made by `devpi-tx gen-config` for %(serverdir)s.
# Install: cp %(files)s /etc/systemd/system/ && systemctl daemon-reload
#          systemctl enable --now %(enable)s

[Unit]
Description=devpi-tx package index (%(serverdir)s)
After=network-online.target%(after)s
Wants=network-online.target
%(requires)s
[Service]
Type=simple
User=%(user)s
Group=%(group)s
Environment=PYTHONUNBUFFERED=1
ExecStart=%(command)s
Restart=on-failure
RestartSec=5
# Exit code 3: a replica stopped on purpose (its primary changed); restarting would not help.
RestartPreventExitStatus=%(replica_stopped)s
TimeoutStopSec=30
LimitNOFILE=65536
%(logs_directory)sNoNewPrivileges=true
PrivateTmp=true
ProtectSystem=full

[Install]
WantedBy=multi-user.target
%(also)s"""


SOCKET = """\
# systemd socket for devpi-tx, made by `devpi-tx gen-config` for %(serverdir)s.
# It stays open over the server's restarts; the server adopts it (--listen systemd:...).
# Install and enable it with %(name)s.service.

[Unit]
Description=devpi-tx package index socket (%(serverdir)s)

[Socket]
ListenStream=%(listen)s
Backlog=1024

[Install]
WantedBy=sockets.target
"""


SUPERVISOR = """\
; supervisor program for devpi-tx, made by `devpi-tx gen-config` for %(serverdir)s.
; Install: copy to /etc/supervisor/conf.d/%(name)s.conf, then
;          supervisorctl reread && supervisorctl update

[program:%(name)s]
command = %(command)s
user = %(user)s
environment = PYTHONUNBUFFERED="1"
autostart = true
autorestart = unexpected
; 3: a replica stopped on purpose (its primary changed); restarting would not help.
exitcodes = 0,%(replica_stopped)s
startsecs = 5
stopsignal = TERM
stopwaitsecs = 30
stopasgroup = true
killasgroup = true
redirect_stderr = true
stdout_logfile_maxbytes = 50MB
stdout_logfile_backups = 5
"""


LOGROTATE = """\
# logrotate snippet for devpi-tx, made by `devpi-tx gen-config` for %(serverdir)s.
# Install: copy to /etc/logrotate.d/%(name)s

%(log)s {
    su %(user)s %(group)s
    daily
    rotate 14
    maxsize 100M
    missingok
    notifempty
    compress
    delaycompress
    # The server keeps the file open and does not reopen it.
    copytruncate
}
"""
