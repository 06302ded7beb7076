from jaxalign.ape.templates import (PROPOSAL_PREFIX, clean_instruction, eval_user, normalise_answer,
                                    proposal_user, variation_user)


def test_clean_instruction():
    assert clean_instruction(" write the opposite of the word\nInput: x", PROPOSAL_PREFIX) == \
        "Write the opposite of the word."
    assert clean_instruction("to give the plural.", PROPOSAL_PREFIX) == "Give the plural."
    assert clean_instruction('"Say hi!"') == "Say hi!"
    assert clean_instruction("  \n ...  ") == ""
    assert clean_instruction("") == ""


def test_normalise_answer():
    assert normalise_answer("  Positive.\nmore") == "positive"
    assert normalise_answer('"Cats"') == "cats"
    assert normalise_answer("") == ""


def test_prompts_carry_their_parts():
    assert eval_user(None, "hot") == "Input: hot\nOutput:"
    assert eval_user("", "hot") == "Input: hot\nOutput:"
    assert eval_user("Flip it.", "hot") == "Instruction: Flip it.\n\nInput: hot\nOutput:"
    p = proposal_user([("hot", "cold"), ("up", "down")])
    assert "Input: hot\nOutput: cold\n\nInput: up\nOutput: down" in p
    assert "Input: Flip it." in variation_user("Flip it.")
