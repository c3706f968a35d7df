#include "blocktest.h"
int main(void){return 0;}
