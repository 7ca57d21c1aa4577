package agent.refusals_test

import data.agent.refusals

test_the_sidecars_reasons_are_the_answer if {
	refusals.decision == {"verdict": "deny", "reasons": ["task token rejected: expired"]} with input as {"refusal": {
		"decision_id": "6a3f1e0c-0000-4000-8000-000000000000",
		"stage": "task",
		"status": 401,
		"verdict": "deny",
		"reasons": ["task token rejected: expired"],
	}}
}

test_a_refusal_without_reasons_is_still_a_deny if {
	refusals.decision.verdict == "deny" with input as {"refusal": {"reasons": []}}
	refusals.decision.verdict == "deny" with input as {}
}
