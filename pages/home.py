"""Home: what transfer learning does here, the steps, and the progress of this workspace."""

import streamlit as st

from pages._common import DATA, EVALUATE, PREDICT, TRAIN, link, workspace
from tlapp.jobs import get_manager, run_status
from tlapp.runs import list_runs


def show_introduction() -> None:
    st.title("Train an image classifier on your own photos")
    st.markdown(
        """
A network trained on ImageNet (1.2 million photos of 1000 kinds of things) has already learned, in
its **early layers**, to see edges, colours, textures and simple shapes. Those features are useful
for almost any photo, so this app **keeps them frozen** and retrains only the **later layers** and
a new output layer (the *head*) on your few hundred photos. That is *transfer learning*: it reaches
good accuracy in minutes on a laptop, where training the whole network from scratch would need far
more photos and time.
"""
    )


def show_steps(ws) -> None:
    st.subheader("Your progress")
    choice = ws.selected_dataset()
    runs = list_runs(ws.runs_dir)
    active = [job for job in get_manager().jobs(owner=ws.id) if job.active]

    columns = st.columns(4)
    with columns[0]:
        st.markdown("**1. Data**: one folder of photos per class.")
        if choice is None:
            st.caption("No dataset chosen yet.")
        else:
            st.caption(f"Dataset: **{choice.label}**")
        link(DATA, "Add or choose photos", icon=":material/photo_library:")
    with columns[1]:
        st.markdown("**2. Train**: pick a backbone and how many stages to freeze.")
        if active:
            job = active[0]
            position = job.queue_position
            state = f"waiting, position {position} in the queue" if position else "running"
            st.caption(f"Training {job.run_dir.name}: {state}.")
        else:
            statuses = [run_status(run.path) for run in runs]
            st.caption(f"{statuses.count('done')} finished runs." if runs else "No run trained yet.")
        link(TRAIN, "Train a model", icon=":material/model_training:")
    with columns[2]:
        st.markdown("**3. Evaluate**: accuracy, confusion matrix and the photos it got wrong.")
        link(EVALUATE, "Evaluate a run", icon=":material/grid_on:")
    with columns[3]:
        st.markdown("**4. Predict**: classify new photos or a webcam picture.")
        link(PREDICT, "Predict new photos", icon=":material/image_search:")


def show_workspace_note(ws) -> None:
    st.divider()
    st.caption(
        f"Your datasets and runs are saved on the server in workspace `{ws.id}`. "
        "Bookmark this page's address (it contains `?ws=...`) to come back to them later, "
        "even after closing the browser."
    )


ws = workspace()
show_introduction()
show_steps(ws)
show_workspace_note(ws)
