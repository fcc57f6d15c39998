"""Layer 4: tcp, udp and tls_passthrough listeners."""
