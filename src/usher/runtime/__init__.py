"""The running balancer's parts: a reload planned as a pure diff of two configs, then applied."""
