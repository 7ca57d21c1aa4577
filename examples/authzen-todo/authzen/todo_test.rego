package authzen_test

import data.authzen

rick := "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"

morty := "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"

beth := "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"

ask(subject, action, owner) := answer if {
	answer := authzen.decision with input as {
		"subject": {"type": "user", "id": subject},
		"action": {"name": action},
		"resource": {"type": "todo", "id": "t1", "properties": {"ownerID": owner}},
	}
}

test_everyone_known_reads if {
	ask(beth, "can_read_user", "") == true
	ask(beth, "can_read_todos", "") == true
}

test_strangers_get_nothing if {
	ask("someone", "can_read_todos", "") == false
}

test_admins_and_editors_create if {
	ask(rick, "can_create_todo", "") == true
	ask(morty, "can_create_todo", "") == true
	ask(beth, "can_create_todo", "") == false
}

test_editors_change_only_their_own if {
	ask(morty, "can_update_todo", "morty@the-citadel.com") == true
	ask(morty, "can_delete_todo", "rick@the-citadel.com") == false
}

test_the_evil_genius_changes_any if {
	ask(rick, "can_delete_todo", "morty@the-citadel.com") == true
}

test_viewers_change_nothing if {
	ask(beth, "can_update_todo", "beth@the-smiths.com") == false
}

test_unknown_actions_are_denied if {
	ask(rick, "can_burn_todo", "") == false
}

test_every_action_is_a_search_candidate if {
	count(authzen.actions) == 5
}
