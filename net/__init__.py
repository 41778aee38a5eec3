"""Host plumbing through netlink (pyroute2): the weave bridge, container veths, iptables."""
