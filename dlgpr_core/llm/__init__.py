"""Language and vision-language model backends shared by questioners and simulated users."""
