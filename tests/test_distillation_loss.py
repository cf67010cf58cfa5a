"""The distillation loss against values worked out by hand, and the role of its T^2 factor."""

from __future__ import annotations

import math

import pytest
import torch

from tlapp.distillation import DistillationLoss, soft_targets


def test_two_class_loss_by_hand():
    # Teacher logits (2, 0), student logits (0, 0), true class 0, T = 2, alpha = 0.5.
    # p = softmax((2, 0) / 2) = (e / (e + 1), 1 / (e + 1)) = (0.731059, 0.268941); q = (0.5, 0.5).
    p = (math.e / (math.e + 1), 1 / (math.e + 1))
    kl = p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5)  # 0.110944
    cross_entropy = -math.log(0.5)  # 0.693147
    expected = 0.5 * cross_entropy + 0.5 * 2**2 * kl  # 0.346574 + 0.221888
    assert expected == pytest.approx(0.568462, abs=1e-6)

    loss = DistillationLoss(temperature=2.0, alpha=0.5)
    value = loss(torch.tensor([[0.0, 0.0]]), torch.tensor([0]), torch.tensor([[2.0, 0.0]]))
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_three_class_loss_by_hand():
    # Teacher logits (2 ln 4, 2 ln 2, 0) at T = 2 give p = (4, 2, 1) / 7; the student's (0, 0, 0) give q = 1/3 each.
    # KL = 4/7 ln(12/7) + 2/7 ln(6/7) + 1/7 ln(3/7) = 0.307998 - 0.044043 - 0.121043 = 0.142912.
    kl = 4 / 7 * math.log(12 / 7) + 2 / 7 * math.log(6 / 7) + 1 / 7 * math.log(3 / 7)
    assert kl == pytest.approx(0.142912, abs=1e-6)
    # True class 0: CE = ln 3 = 1.098612. alpha = 0.25: 0.25 * 1.098612 + 0.75 * 4 * 0.142912 = 0.703390.
    expected = 0.25 * math.log(3) + 0.75 * 4 * kl
    assert expected == pytest.approx(0.703390, abs=1e-6)

    teacher = torch.tensor([[2 * math.log(4), 2 * math.log(2), 0.0]])
    loss = DistillationLoss(temperature=2.0, alpha=0.25)
    assert soft_targets(teacher, 2.0)[0].tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7], abs=1e-6)
    value = loss(torch.zeros(1, 3), torch.tensor([0]), teacher)
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_loss_averages_over_batch():
    # Row 1 is the two-class case above: CE 0.693147, T^2 KL 0.443776.
    # Row 2: the student copies the teacher (2, 0) exactly, so KL = 0, and the true class is 1:
    # CE = -ln(1 / (e^2 + 1)) = ln(1 + e^2) = 2.126928.
    cross_entropy = (math.log(2) + math.log(1 + math.e**2)) / 2
    soft = (4 * 0.110944) / 2
    expected = 0.5 * cross_entropy + 0.5 * soft
    assert expected == pytest.approx(0.815963, abs=1e-5)

    student = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    value = DistillationLoss(temperature=2.0, alpha=0.5)(student, torch.tensor([0, 1]), teacher)
    assert value.item() == pytest.approx(expected, abs=1e-5)


def test_alpha_one_is_cross_entropy():
    student = torch.tensor([[0.3, -1.2, 2.0]])
    loss = DistillationLoss(temperature=5.0, alpha=1.0)
    # Without a teacher term the loss is the ordinary cross-entropy and needs no teacher logits.
    expected = -torch.log_softmax(student, 1)[0, 2].item()
    assert loss(student, torch.tensor([2])).item() == pytest.approx(expected, abs=1e-6)


def test_alpha_zero_ignores_labels():
    student = torch.tensor([[0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0]])
    loss = DistillationLoss(temperature=3.0, alpha=0.0)
    assert loss(student, torch.tensor([0]), teacher).item() == pytest.approx(
        loss(student, torch.tensor([1]), teacher).item()
    )


def test_teacher_logits_required_below_alpha_one():
    with pytest.raises(ValueError, match="teacher_logits"):
        DistillationLoss(alpha=0.5)(torch.zeros(1, 2), torch.tensor([0]))


def test_soft_term_is_t_squared_times_kl():
    student = torch.tensor([[0.5, -0.5, 1.5]])
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    for temperature in (1.0, 4.0, 10.0):
        p = soft_targets(teacher, temperature)
        q = soft_targets(student, temperature)
        kl = (p * (p.log() - q.log())).sum().item()
        soft = DistillationLoss(temperature, alpha=0.0).soft_term(student, teacher).item()
        assert soft == pytest.approx(temperature**2 * kl, rel=1e-5)


def _soft_gradient_norm(temperature: float, scale_by_t_squared: bool) -> float:
    student = torch.tensor([[0.5, -0.5, 1.5]], requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    term = DistillationLoss(temperature, alpha=0.0).soft_term(student, teacher)
    if not scale_by_t_squared:
        term = term / temperature**2
    term.backward()
    return student.grad.norm().item()


def test_t_squared_keeps_gradient_scale():
    # The soft term's gradient shrinks as 1/T^2; with the T^2 factor it stays about the same.
    scaled = _soft_gradient_norm(10.0, True) / _soft_gradient_norm(20.0, True)
    unscaled = _soft_gradient_norm(10.0, False) / _soft_gradient_norm(20.0, False)
    assert scaled == pytest.approx(1.0, abs=0.05)
    assert unscaled == pytest.approx(4.0, rel=0.05)


def test_invalid_loss_settings():
    with pytest.raises(ValueError):
        DistillationLoss(temperature=0.0)
    with pytest.raises(ValueError):
        DistillationLoss(alpha=1.5)
