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

# denies answers from one quick check when the caller passes it; denies_found has the
# reasons. A caller that fails the quick check (or is registered by a pattern) gets
# denies_found, so the two agree on every input; these would catch a quick check that
# lets through a caller denies_found refuses.
quick_writer := {"spiffe_id": "spiffe://demo.local/agent/writer", "trust_domain": "demo.local"}

test_quick_check_agrees_with_the_reasons if {
	identity.denies == set() with input as {"agent": quick_writer}
	identity.denies == identity.denies_found with input as {}

	# A trust domain "" in data does not make "spiffe:///..." valid.
	identity.denies == identity.denies_found with input as {"agent": {"spiffe_id": "spiffe:///agent/writer", "trust_domain": ""}}
		with data.agent.config.trust_domains as ["demo.local", ""]
		with data.agent.config.agents as {"spiffe:///agent/writer": {"roles": ["reader"]}}
	callers := [
		quick_writer,
		{"spiffe_id": "spiffe://demo.local/agent/ops/backup", "trust_domain": "demo.local"},
		{"spiffe_id": "spiffe://demo.local/agent/stranger", "trust_domain": "demo.local"},
		object.union(quick_writer, {"trust_domain": "demo.local.evil"}),
		{"spiffe_id": "spiffe://demo.local.evil/agent/writer", "trust_domain": "demo.local.evil"},
		{"spiffe_id": "spiffe:///agent/writer", "trust_domain": ""},
		{"spiffe_id": "https://demo.local/agent/writer", "trust_domain": "demo.local"},
		{"spiffe_id": 7, "trust_domain": "demo.local"},
		{"trust_domain": "demo.local"},
		{"spiffe_id": "spiffe://demo.local/agent/writer"},
		"spiffe://demo.local/agent/writer",
		null,
	]
	every caller in callers {
		identity.denies == identity.denies_found with input as {"agent": caller}
	}
}
