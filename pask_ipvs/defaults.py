"""Every config key's default, in one place (the schema's "default" annotations must
agree: tests/test_schema.py checks). Read by validation and by the model builder."""

DEFAULT_VIP_INTERFACE = "pask0"
DEFAULT_DRAIN_TIMEOUT = 0
DEFAULT_METRICS_PER_SERVER = True
# ha: (an active/standby pair, docs/design.md "ha")
DEFAULT_HA_ADVERT_INTERVAL = 1
DEFAULT_HA_PREEMPT = False
DEFAULT_HA_PREEMPT_DELAY = 10     # s a returning node waits (and syncs) before it takes over
DEFAULT_HA_SYNC_CONNECTIONS = True
# bgp: (scale-out behind ECMP, docs/design.md "bgp")
DEFAULT_BGP_HOLD_TIME = 3         # s: a dead LB leaves the routers' ECMP set within it
DEFAULT_BGP_ANNOUNCE = "healthy"
DEFAULT_BGP_TAKEOVER = True       # flows moved to another LB keep their real server
DEFAULT_PROTOCOL = "tcp"
DEFAULT_SCHEDULER = "wlc"
DEFAULT_NAT_MODE = "dest-nat"
DEFAULT_ON_FAILURE = "inhibit"
DEFAULT_APPLICATION = "none"
# ftp in a DSR mode: the passive range the fwmark covers, and the persistence a service
# without its own gets (data connections must reach the server of their control connection).
DEFAULT_FTP_PASSIVE_PORTS = "1024-65535"
DEFAULT_FTP_DSR_PERSISTENCE_TIMEOUT = 300
DEFAULT_WEIGHT = 1
DEFAULT_STATE = "enabled"
DEFAULT_NETMASK = {4: "255.255.255.255", 6: "128"}
DEFAULT_HEALTH = {"type": "none", "interval": 2, "timeout": 1, "rise": 2, "fall": 3}

# Health type -> its own keys and their defaults (None: optional, no default).
# The schema allows each key only for the types listed here.
HEALTH_PARAMS: dict[str, dict[str, object]] = {
    "none": {},
    "tcp": {},
    "http": {"path": "/", "method": "GET", "host": None, "expect_status": (200,), "body_regex": None},
    "https": {"path": "/", "method": "GET", "host": None, "expect_status": (200,), "body_regex": None,
              "sni": None, "verify_tls": False},
    "udp": {"payload": None, "expect": None},
    "dns": {"query_name": None, "query_type": "A", "expect_rcode": "NOERROR"},
    "script": {"command": None},
}
