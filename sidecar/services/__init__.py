"""The platform services OPA talks to: the bundle server and the decision-log receiver."""
