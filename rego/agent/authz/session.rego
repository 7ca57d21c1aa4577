# Session state: what the agent already did in this session (input.session),
# and the limits the policy puts on it (data.agent.config.session).
#
# input.session is null (the sidecar keeps no session for this call) or
# {key, calls, writes, calls_last_minute, labels, recent, started_at}. Its
# counters count the earlier allowed calls of the session plus the other calls
# in flight (the sidecar reserves before it asks), never the current call: so
# "at most N writes" denies a write once writes >= N. The ratchet in
# step_up.rego reads input.session.labels.
package agent.authz

session := input.session if is_object(input.session)

session_key := sprintf("%v", [session.key])

# data.agent.config.session; absent, null or not an object: no limits.
session_settings := settings if {
	settings := cfg.session
	is_object(settings)
} else := {}

# ---------------------------------------------------------------------------
# Is the session judgeable (a request deny): the fields the policy reads

request_denies contains msg if {
	input.session != null
	not session
	msg := sprintf("input.session is neither null nor a session state object (%v)", [type_name(input.session)])
}

request_denies contains msg if {
	session
	some field in ["calls", "writes", "calls_last_minute"]
	not whole_number(object.get(session, field, null))
	msg := sprintf("input.session.%s is not a whole number >= 0 (%s)", [field, json.marshal(object.get(session, field, null))])
}

request_denies contains msg if {
	session
	not is_string(object.get(session, "key", null))
	msg := sprintf("input.session.key is not a string (%s)", [json.marshal(object.get(session, "key", null))])
}

request_denies contains msg if {
	session
	not string_list(object.get(session, "labels", null))
	msg := sprintf("input.session.labels is not a list of strings (%s)", [json.marshal(object.get(session, "labels", null))])
}

whole_number(n) if {
	is_number(n)
	n >= 0
	n == floor(n)
}

string_list(values) if {
	is_array(values)
	every value in values {
		is_string(value)
	}
}

# ---------------------------------------------------------------------------
# The limits (access denies). A limit that is absent (or null) from data is no
# limit; one that is not a whole number >= 0 denies what it would have limited.

max_writes := object.get(session_settings, "max_writes", null)

max_calls_per_minute := object.get(session_settings, "max_calls_per_minute", null)

access_denies contains msg if {
	session
	is_write
	whole_number(max_writes)
	session.writes >= max_writes
	msg := sprintf(
		"agent %s reached the limit of %v writes in this session (%s)",
		[agent_name, max_writes, session_key],
	)
}

access_denies contains msg if {
	session
	whole_number(max_calls_per_minute)
	session.calls_last_minute >= max_calls_per_minute
	msg := sprintf(
		"agent %s made %v calls in the last minute; the limit is %v",
		[agent_name, session.calls_last_minute, max_calls_per_minute],
	)
}

access_denies contains msg if {
	session
	is_write
	max_writes != null
	not whole_number(max_writes)
	msg := sprintf(
		"session.max_writes in the policy data is not a whole number >= 0 (%v), so writes in a session are denied",
		[max_writes],
	)
}

access_denies contains msg if {
	session
	max_calls_per_minute != null
	not whole_number(max_calls_per_minute)
	msg := sprintf(
		"session.max_calls_per_minute in the policy data is not a whole number >= 0 (%v), so calls in a session are denied",
		[max_calls_per_minute],
	)
}
