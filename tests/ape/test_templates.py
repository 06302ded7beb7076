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


def test_clean_instruction_strips_list_markers():
    for marker in ("- ", "* ", "• ", "1. ", "1) ", "(2) ", "12. "):
        assert clean_instruction(f"{marker}write the opposite word", PROPOSAL_PREFIX) == "Write the opposite word."
    assert clean_instruction('- "Give the plural."') == "Give the plural."
    assert clean_instruction("1. to give the plural", PROPOSAL_PREFIX) == "Give the plural."
    # Not a marker: a number that belongs to the text, a hyphen without a space, a lone bullet.
    assert clean_instruction("3 words per answer") == "3 words per answer."
    assert clean_instruction("1.5 times the input") == "1.5 times the input."
    assert clean_instruction("-x flips the sign") == "-x flips the sign."
    assert clean_instruction("- ") == ""
