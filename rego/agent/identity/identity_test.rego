package agent.identity_test

import data.agent.identity

test_trust_domain if {
	identity.trust_domain("spiffe://demo.local/agent/reader") == "demo.local"
	identity.trust_domain("spiffe://demo.local") == "demo.local"
	identity.trust_domain("spiffe://demo.local.evil/agent/writer") == "demo.local.evil"
	not identity.trust_domain("spiffe:///agent/reader")
	not identity.trust_domain("https://demo.local/agent/reader")
	not identity.trust_domain(42)
	not identity.trust_domain(null)
}

test_registered_and_trusted if {
	identity.registered("spiffe://demo.local/agent/reader")
	identity.registered("spiffe://demo.local/agent/ops/backup")
	not identity.registered("spiffe://demo.local/agent/ops/team/backup")
	not identity.registered("spiffe://demo.local/agent/reader2")
	not identity.registered(7)
	identity.trusted("spiffe://demo.local/agent/writer")
	not identity.trusted("spiffe://demo.local/agent/stranger")
	not identity.trusted("spiffe://evil.example/agent/writer") with data.agent.config.agents as {"spiffe://evil.example/agent/writer": {"roles": ["writer"]}}
}

test_roles_of if {
	identity.roles_of("spiffe://demo.local/agent/writer") == {"reader", "writer"}
	identity.roles_of("spiffe://demo.local/agent/ops/backup") == {"reader"}
	identity.roles_of("spiffe://demo.local/agent/stranger") == set()
}

test_caller_roles if {
	identity.roles == {"reader", "writer"} with input as {"agent": {"spiffe_id": "spiffe://demo.local/agent/writer"}}
	identity.roles == set() with input as {"agent": {"trust_domain": "demo.local"}}
	identity.roles == set() with input as {}
}
