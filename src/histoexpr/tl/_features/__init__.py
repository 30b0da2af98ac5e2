"""Features of tiles and sections: embed, embed_cohort, squidpy features, pretrain, probe."""
