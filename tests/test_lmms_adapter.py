"""The lmms-eval adapter against a local stand-in of lmms-eval's Instance, with real outputs of the tiny Florence-VL."""

import importlib
import importlib.util
from dataclasses import dataclass, field

import pytest
import torch

from florence_vl.eval.lmms_adapter import FlorenceVLLmms
from test_serve_api import picture
from vl_tiny import tiny_vl

QUESTIONS = ["How many shapes are there?", "What color is the star?", "Describe the image in detail.",
             "Is there a red circle?", "Is there a cross?"]


@dataclass
class Instance:
    """lmms_eval.api.instance.Instance, the part a model sees: request_type, arguments, `.args`."""

    request_type: str
    arguments: tuple
    idx: int
    metadata: dict = field(default_factory=lambda: {"task": None, "doc_id": None, "repeats": 1})

    @property
    def args(self):
        return self.arguments if isinstance(self.arguments, tuple) else (self.arguments,)


@pytest.fixture(scope="module")
def vl(tiny_florence2):
    return tiny_vl(tiny_florence2)


@pytest.fixture(scope="module")
def docs():
    return [{"image": picture(seed=i, size=(60 + 6 * i, 50)), "question": QUESTIONS[i], "answer": "3"}
            for i in range(5)]


def adapter_for(vl, docs, **options):
    lm = FlorenceVLLmms(model=vl, **options)
    lm.task_dict = {"toyvqa": {"test": docs}}  # what lmms-eval's evaluator sets before it asks
    return lm


def to_visual(doc):
    return [doc["image"]]


def generation(doc_id, gen_kwargs, docs):
    return Instance("generate_until", (docs[doc_id]["question"], gen_kwargs, to_visual, doc_id, "toyvqa", "test"),
                    doc_id)


def test_generate_until_answers_are_florence_vl_answers(vl, docs):
    lm = adapter_for(vl, docs, batch_size=2)
    requests = [generation(i, {"max_new_tokens": 10, "until": ["never-there"]}, docs) for i in range(4)]
    requests.append(generation(4, {"max_new_tokens": 6, "temperature": 0}, docs))  # another group
    answers = lm.generate_until(requests)
    want = [vl.answer([d["image"]], [d["question"]], max_new_tokens=10)[0] for d in docs[:4]]
    want.append(vl.answer([docs[4]["image"]], [docs[4]["question"]], max_new_tokens=6)[0])
    assert answers == want and all(isinstance(a, str) for a in answers)


def test_generate_until_cuts_at_until(vl, docs):
    lm = adapter_for(vl, docs)
    whole = vl.answer([docs[2]["image"]], [docs[2]["question"]], max_new_tokens=24)[0]
    stop = whole[len(whole) // 2: len(whole) // 2 + 2]
    [cut] = lm.generate_until([generation(2, {"max_new_tokens": 24, "until": stop}, docs)])
    assert cut == whole.split(stop)[0] and len(cut) < len(whole)


def hand_loglikelihood(vl, image, context, target_ids):
    """Sum of log p(token) with the KV cache, token by token: another road than the adapter's one forward."""
    model = vl.model
    prompt = torch.tensor([vl.processor.prompt(context)])
    spliced = model.splice(prompt, pixel_values=vl.processor.pixel_values([image]), padding_side="left")
    with torch.no_grad():
        out = model.llm(inputs_embeds=spliced["inputs_embeds"], attention_mask=spliced["attention_mask"],
                        use_cache=True)
        total, greedy, past = 0.0, True, out.past_key_values
        logits, length = out.logits[0, -1], spliced["inputs_embeds"].shape[1]
        for token in target_ids:
            logp = logits.float().log_softmax(-1)
            total += logp[token].item()
            greedy &= int(logp.argmax()) == token
            length += 1
            out = model.llm(input_ids=torch.tensor([[token]]), past_key_values=past,
                            attention_mask=torch.ones(1, length, dtype=torch.long), use_cache=True)
            logits, past = out.logits[0, -1], out.past_key_values
    return total, greedy


def test_loglikelihood_is_the_sum_of_log_probs_and_greedy_is_right(vl, docs):
    lm = adapter_for(vl, docs)
    encode = lambda text: vl.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    def greedy_start(doc):
        """Generate's greedy tokens (and their log-probs from its scores), as long a start as re-tokenizes
        to the same ids (random weights emit byte pieces that may not)."""
        out = vl.model.generate(input_ids=torch.tensor([vl.processor.prompt(doc["question"])]),
                                pixel_values=vl.processor.pixel_values([doc["image"]]), max_new_tokens=6,
                                do_sample=False, pad_token_id=vl.processor.pad_id,
                                eos_token_id=vl.processor.stop_token_ids(), return_dict_in_generate=True,
                                output_scores=True)
        ids = out.sequences[0].tolist()
        for k in range(len(ids), 0, -1):
            if encode(vl.tokenizer.decode(ids[:k])) == ids[:k]:
                return k, vl.tokenizer.decode(ids[:k]), sum(s[0].float().log_softmax(-1)[t].item()
                                                              for s, t in zip(out.scores, ids[:k]))
        return 0, None, None

    doc_id, (k, greedy_text, from_scores) = max(((i, greedy_start(d)) for i, d in enumerate(docs)),
                                                key=lambda item: item[1][0])
    assert k >= 1, "no document's greedy start re-tokenizes"
    doc, other = docs[doc_id], " a red circle"
    requests = [Instance("loglikelihood", (doc["question"], greedy_text, to_visual, doc_id, "toyvqa", "test"), 0),
                Instance("loglikelihood", (doc["question"], other, to_visual, doc_id, "toyvqa", "test"), 1),
                Instance("loglikelihood", (doc["question"], lambda d: d["answer"], to_visual, doc_id, "toyvqa",
                                           "test"), 2)]
    (greedy_lp, is_greedy), (other_lp, other_greedy), (target_lp, _) = lm.loglikelihood(requests)
    assert is_greedy is True and greedy_lp == pytest.approx(from_scores, abs=1e-4) and greedy_lp < 0
    want, want_greedy = hand_loglikelihood(vl, doc["image"], doc["question"], encode(other))
    assert other_lp == pytest.approx(want, abs=1e-4) and other_greedy is want_greedy is False
    assert target_lp == pytest.approx(hand_loglikelihood(vl, doc["image"], doc["question"], encode("3"))[0], abs=1e-4)


def test_mistakes_are_clear(vl, docs):
    from florence_vl.errors import InputError

    lm = adapter_for(vl, docs)
    no_image = Instance("generate_until", ("hi", {}, lambda d: [], 0, "toyvqa", "test"), 0)
    with pytest.raises(InputError, match="has no image"):
        lm.generate_until([no_image])
    video = Instance("generate_until", ("hi", {}, lambda d: ["clip.mp4"], 0, "toyvqa", "test"), 0)
    with pytest.raises(InputError, match="path or video"):
        lm.generate_until([video])
    with pytest.raises(ValueError, match="unknown model_args conv_template"):
        FlorenceVLLmms(model=vl, conv_template="vicuna")
    with pytest.raises(NotImplementedError):
        lm.generate_until_multi_round([])


def test_plugin_is_found_the_way_lmms_eval_looks_and_loads_a_checkpoint(vl, docs, tmp_path):
    plugin = "florence_vl.eval.lmms_plugin"  # what LMMS_EVAL_PLUGINS names
    models = importlib.import_module(f"{plugin}.models")
    (name, class_name), = models.AVAILABLE_MODELS.items()
    module_name, cls_name = f"{plugin}.models.{name}.{class_name}".rsplit(".", 1)  # lmms-eval's get_model
    cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
    assert name == "florence_vl" and cls is FlorenceVLLmms
    assert importlib.util.find_spec(f"{plugin}.tasks").submodule_search_locations  # lmms-eval's include path
    vl.save_pretrained(tmp_path / "ckpt")
    lm = cls.create_from_arg_string(f"pretrained={tmp_path / 'ckpt'},batch_size=2,max_new_tokens=8",
                                    {"batch_size": None, "device": "cpu"})
    assert lm.batch_size == 2 and lm.max_new_tokens == 8 and lm.rank == 0 and lm.world_size == 1
    lm.task_dict = {"toyvqa": {"test": docs}}
    assert lm.generate_until([generation(1, {}, docs)]) == \
        vl.answer([docs[1]["image"]], [docs[1]["question"]], max_new_tokens=8)
