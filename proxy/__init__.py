"""The Docker API proxy (issue: `eval $(weavepy env)`)."""
